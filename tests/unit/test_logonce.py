"""LogOnce: a key's message is logged the first time only, until the key is reset."""

import logging
import threading

from ingress_ipvs_exporter.logonce import LogOnce

log = logging.getLogger("test.logonce")


def _said(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == log.name]


def test_each_key_once_until_reset(caplog):
    said = LogOnce(log)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        assert said.log("timeout", logging.WARNING, "no answer within %ss", 2)
        assert not said.log("timeout", logging.WARNING, "no answer within %ss", 3)  # same key: silent
        assert said.log("refused", logging.ERROR, "connection refused")
        assert said.reset("timeout") and not said.reset("timeout") and not said.reset("never")
        assert said.log("timeout", logging.WARNING, "no answer within %ss", 4)
        assert not said.log("refused", logging.ERROR, "connection refused")
        assert said.reset() and not said.reset()  # everything forgotten; then nothing left
        assert said.log("refused", logging.ERROR, "connection refused")
    assert _said(caplog) == [
        (logging.WARNING, "no answer within 2s"),
        (logging.ERROR, "connection refused"),
        (logging.WARNING, "no answer within 4s"),
        (logging.ERROR, "connection refused"),
    ]


def test_remembers_at_most_limit_keys_oldest_forgotten_first(caplog):
    said = LogOnce(log, limit=2)
    with caplog.at_level(logging.INFO, logger=log.name):
        for key in ("a", "b", "c", "b", "a"):
            said.log(key, logging.INFO, key)
    assert [m for _, m in _said(caplog)] == ["a", "b", "c", "a"]  # "a" was forgotten for "c"


def test_threads_racing_on_one_key_log_it_once(caplog):
    said, start = LogOnce(log), threading.Barrier(8)

    def run():
        start.wait(5)
        for _ in range(200):
            said.log("k", logging.WARNING, "once")

    threads = [threading.Thread(target=run) for _ in range(8)]
    with caplog.at_level(logging.WARNING, logger=log.name):
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert _said(caplog) == [(logging.WARNING, "once")]
