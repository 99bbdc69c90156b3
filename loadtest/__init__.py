"""gptoss load tester: open-loop and closed-loop load against OpenAI-compatible servers, harmony-aware metrics
(reasoning and final channels), goodput under SLOs, exactly mergeable histograms, result files, plots and compare.

config -> runner (processes) -> worker (schedule, sessions) -> target (HTTP SSE) -> metrics -> report / plots.
"""

__version__ = "0.1.0"
