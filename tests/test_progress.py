"""progress.py: the logger protocol the core reports through, and a progress bar that stays silent
where nobody watches (CI logs, `mlflow run` piped to a file)."""
import io

from mlflow_unlearn.progress import ListLogger, MetricLogger, NullLogger, ProgressBar


def test_list_logger_keeps_every_call_as_a_copy():
    log = ListLogger()
    metrics = {"loss": 1.5}
    log.log_metrics(metrics, step=3)
    metrics["loss"] = 0.0  # the caller reusing its dict must not rewrite history
    log.log_metrics({"acc": 0.5})
    assert log.records == [(3, {"loss": 1.5}), (None, {"acc": 0.5})]


def test_loggers_satisfy_the_protocol_a_core_function_is_typed_with():
    def train(log: MetricLogger):
        log.log_metrics({"loss": 0.25}, step=0)

    for log in (NullLogger(), ListLogger()):
        train(log)  # NullLogger swallows, ListLogger keeps
    assert log.records == [(0, {"loss": 0.25})]


class _Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_draws_on_a_terminal_only(monkeypatch):
    import time

    monkeypatch.setattr(ProgressBar, "_last_line", time.monotonic())  # no heartbeat line within this test
    for tty, enabled, drawn in ((True, True, True), (False, True, False), (True, False, False)):
        stderr = _Terminal(tty)
        monkeypatch.setattr("sys.stderr", stderr)
        bar = ProgressBar(total=4, desc="train", enabled=enabled, unit="epoch")
        for _ in range(4):
            bar.update(loss=0.123456789)
        bar.close(acc=0.987654321)
        out = stderr.getvalue()
        assert ("train" in out) is drawn, (tty, enabled, out)
        if drawn:
            # four significant digits in the postfix, not the float's full repr
            assert "4/4" in out and "acc=0.9877" in out and "0.987654321" not in out


def test_progress_bar_with_nothing_to_do_still_closes(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Terminal(True))
    bar = ProgressBar(total=0, desc="empty")  # an empty tier: the total is clamped to 1
    bar.close()


def test_without_a_terminal_a_long_phase_prints_a_heartbeat_line(monkeypatch):
    """A piped log (`make demo > log`, CI) gets a plain line at most every HEARTBEAT_S, none more often."""
    import mlflow_unlearn.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ProgressBar, "_last_line", 1000.0)
    stderr = _Terminal(False)
    monkeypatch.setattr("sys.stderr", stderr)
    bar = ProgressBar(total=100, desc="train epoch 3/30", unit="step")
    for _ in range(10):  # 10 steps within 5 s: no line
        clock[0] += 0.5
        bar.update(loss=0.25)
    assert stderr.getvalue() == ""
    clock[0] += progress.HEARTBEAT_S
    bar.update(loss=0.25)
    assert stderr.getvalue() == "  ... train epoch 3/30: 11/100 steps, loss 0.25\n"
    bar.update()
    assert stderr.getvalue().count("\n") == 1  # not again until another HEARTBEAT_S has passed
    quiet = ProgressBar(total=5, desc="quiet", enabled=False)
    clock[0] += 10 * progress.HEARTBEAT_S
    quiet.update()
    assert "quiet" not in stderr.getvalue()
