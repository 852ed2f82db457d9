"""What a restore's borrowed links did, for its stats and its log line (docs/MULTI_GPU.md,
"Borrowed links"). libthaw decides and reports; this module only gathers its reports and says
once per process what would otherwise repeat on every restore (the destination is the only device)."""
import logging
import threading

log = logging.getLogger("thaw_vllm")

_said = set()
_said_lock = threading.Lock()


def say_once(note: str) -> None:
    with _said_lock:
        if note in _said:
            return
        _said.add(note)
    log.info("thaw: %s", note)


def stats_of(reports: list) -> dict:
    """{"links": [every link of every engine call], "links_summary": "links: ..." or None} from the
    bridge's reports ({"links", "summary", "note"}, one per engine call); notes said once."""
    links, summaries = [], []
    for report in reports:
        links += report["links"]
        if report.get("summary"):
            summaries.append(report["summary"])
        if report.get("note"):
            say_once(report["note"])
        notes = [link["note"] for link in report["links"] if link["note"]]
        if notes:  # one line per restore: which links were left out or dropped, and why
            log.warning("thaw: borrowed links: %s", "; ".join(notes))
    return {"links": links, "links_summary": "; ".join(summaries) or None}


def log_suffix(stats: dict) -> str:
    """", links: mock-0 5.1 GB direct, mock-1 5.0 GB borrowed" for a restore that borrowed, else ""."""
    summary = stats.get("links_summary")
    return f", {summary}" if summary else ""
