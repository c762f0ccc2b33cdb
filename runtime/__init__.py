"""guardrt.runtime: what a deployed client or server needs (specs, exact preprocessing, postprocessing, runners,
Triton client, server launcher). Never imports torch or transformers; optional packages are imported lazily."""
