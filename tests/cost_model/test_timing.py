import time

from leangraph.cost_model.timing import median_seconds


def test_calls_during_the_warmup_are_not_timed():
    calls = []

    def slow_start():  # a session whose first calls are slow, as a fresh ONNX Runtime session's
        calls.append(None)
        if len(calls) <= 5:
            time.sleep(0.005)

    seconds = median_seconds(slow_start, calls=3, rounds=3, warmup=0.05)
    assert seconds < 0.001
    assert len(calls) > 5 + 9


def test_one_call_is_made_even_without_warmup():
    calls = []
    median_seconds(lambda: calls.append(None), calls=2, rounds=2, warmup=0.0)
    assert len(calls) == 1 + 4
