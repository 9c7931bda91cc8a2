"""Generation engines, one module each, registered with @register_engine (see ..engines).

Imported in the engine's own Python environment too (the worker): top-level imports are the
standard library and pipeline.generation.engines only; an engine imports its library in run().
"""
