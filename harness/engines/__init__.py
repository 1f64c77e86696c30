"""Engines: the evaluation contract (requests, token scores, ``Engine``), the HF and vLLM engines, the
factory that picks one, the evaluation cache, the plan runner and the bandwidth model."""
