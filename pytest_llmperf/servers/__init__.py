"""Serving: a model name in, a running ``Server`` out, and back down again.

``base`` is the boundary every backend shares (the ``Server`` and
``Backend`` protocols, ``LaunchRequest``, the subprocess lifecycle);
``backends`` finds a backend by name (built-ins and entry points); one
module per engine (``llamacpp``, ``vllm``, ``ollama``, ``endpoint``);
``models`` is the registry; ``fit`` and ``hardware`` answer "can this
machine run it"; and the provisioning of local engines and models lives
here too: ``llamacpp_build`` (llama-server from pinned source),
``vllm_env`` (vLLM on CPU) and ``tiny_model`` (the random-weight Llama it
serves). Servers start, answer health checks and stop; nothing here
measures, judges or writes results, and nothing imports the session, the
plugin or the measuring and judging stages.
"""
