"""Measuring: one scenario in, raw per-request stamps and their summary out.

``runner`` is the entry (prompts, then load, then summary and validity);
``prompts`` builds exact-length prompts with the server's own tokenizer;
``loadgen`` shapes the load (closed loop, constant or Poisson rate,
warm-up, adaptive stop, event-loop lag); ``client`` sends one streamed
request on a kept-alive raw asyncio connection (``stream`` keeps every read
with its ``perf_counter_ns`` stamp and finds where each response ends;
``limits`` raises the open-file limit); ``workers`` spreads a run over client
processes (``workerproc`` is one of them); ``wire`` turns the reads into token
arrival times after the request ends; ``stats`` derives percentiles, rates and
confidence intervals. Pure asyncio and arithmetic: nothing here imports
pytest, the session, the judge, the writers or the server backends, and
nothing here writes files.
"""
