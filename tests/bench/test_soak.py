"""bench/soak.py's summary: readings after warm-up, and 5xx picked out of the statuses."""

from __future__ import annotations

from collections import Counter

from bench.soak import WARMUP_S, summarise


def test_summary_spans_readings_after_warmup_and_picks_out_5xx() -> None:
    samples = [{"t_s": t, "rss_mib": rss, "fds": fds, "threads": 14}
               for t, rss, fds in [(WARMUP_S - 10, 200.0, 40), (WARMUP_S, 240.0, 31),
                                   (WARMUP_S + 10, 243.0, 33), (WARMUP_S + 20, 242.0, 30)]]
    statuses = Counter({"score 1 200": 10, "score 1 503": 2, "bad (wrong type) 422": 3})
    summary = summarise(samples, statuses, Counter({"slow": 1}), client_gone=4.0)
    assert summary["rss_mib_after_warmup"] == [240.0, 243.0, 242.0]
    assert summary["fds_after_warmup"] == [31, 33, 30]
    assert summary["five_xx"] == {"score 1 503": 2}
    assert summary["unanswered"] == 1
    assert summary["server_client_gone"] == 4.0
