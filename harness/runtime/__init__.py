"""The machine and the code: loading models onto devices, CPU threads, progress display, library
noise, and hashes of the source behind a result."""
