"""FrameBuilder: records to columns, chunk by chunk (pure logic; the Redis paths are in test_batch.py)."""

from __future__ import annotations

import gc
import inspect

import pandas as pd

from mediaq.client.frames import FrameBuilder, gc_paused, records_frame
from mediaq.errors import JobError

T0 = 1_764_482_400_000  # epoch ms


def _result(job_id: str, value, *, ok: bool = True, args=(), kwargs=None, function: str = "f") -> tuple:
    return (job_id, {"s": ok, "f": function, "a": list(args), "k": kwargs or {}, "r": value, "t": 1,
                     "et": T0, "st": T0 + 250, "ft": T0 + 1250}, None)


def test_rows_columns_and_dtypes():
    records = [
        _result("a", {"width": 250, "path": "t/a.jpg"}, kwargs={"image_id": "a"}),
        _result("b", JobError("PermanentJobError", "bad image", "Traceback...", code="image.corrupt"),
                ok=False, kwargs={"image_id": "b"}),
        ("c", None, {"f": "f", "a": [], "k": {"image_id": "c"}, "et": T0, "t": None}),
        ("d", None, None),
    ]
    df = records_frame(records, batch="x", statuses={"c": "deferred"})
    assert list(df.columns) == ["job_id", "function", "batch", "image_id", "status", "success", "tries",
                                "enqueue_time", "start_time", "finish_time", "queue_seconds", "run_seconds",
                                "width", "path", "error_type", "error_code", "error_message", "traceback"]
    assert df["status"].tolist() == ["complete", "failed", "deferred", "not_found"]
    assert df["success"].tolist() == [True, False, pd.NA, pd.NA]
    assert str(df["success"].dtype) == "boolean" and str(df["tries"].dtype) == "Int64"
    assert str(df["enqueue_time"].dtype) == "datetime64[ns, UTC]"
    assert df["enqueue_time"][0] == pd.Timestamp(T0, unit="ms", tz="UTC")
    assert df["queue_seconds"][0] == 0.25 and df["run_seconds"][0] == 1.0
    assert pd.isna(df["start_time"][2]) and pd.isna(df["run_seconds"][2])
    assert df["width"].tolist()[0] == 250 and pd.isna(df["width"][1])
    assert df.loc[1, ["error_type", "error_code", "error_message", "traceback"]].tolist() == [
        "PermanentJobError", "image.corrupt", "bad image", "Traceback..."]
    assert df["batch"].unique().tolist() == ["x"]


def test_chunks_with_different_shapes_pad_each_other():
    builder = FrameBuilder()
    builder.add([_result("a", {"w": 1}, kwargs={"x": 1})])
    builder.add([_result("b", 7, kwargs={"y": 2}), _result("c", {"h": 3}, kwargs={"x": 3})])
    df = builder.frame()
    assert len(builder) == 3 and len(df) == 3
    assert df["x"].tolist()[0::2] == [1, 3] and pd.isna(df["x"][1])
    assert pd.isna(df["y"][0]) and df["y"][1] == 2
    assert df["w"].tolist()[0] == 1 and df["result"].tolist()[1] == 7 and df["h"].tolist()[2] == 3


def test_positional_arguments_named_from_the_signature_and_keyword_overrides():
    def f(ctx, image_id, size="medium"):
        pass

    records = [_result("a", None, args=["i1", "large"]), _result("b", None, args=["i2"]),
               _result("c", None, kwargs={"image_id": "i3"}), _result("d", None, args=[1, 2, 3], function="g")]
    df = records_frame(records, signatures={"f": inspect.signature(f)})
    assert df["image_id"].tolist()[:3] == ["i1", "i2", "i3"]
    assert df["size"].tolist()[0] == "large" and pd.isna(df["size"][1])
    assert df[["arg0", "arg1", "arg2"]].iloc[3].tolist() == [1, 2, 3]  # unknown function: arg<n>


def test_name_clashes_get_prefixes():
    # an argument named like a base column, a result field named like an argument or a base column
    records = [_result("a", {"image_id": "out", "status": "done", "n": 1}, kwargs={"image_id": "in", "status": 5})]
    df = records_frame(records)
    assert df["status"][0] == "complete"
    assert df["arg_status"][0] == 5
    assert df["image_id"][0] == "in" and df["result_image_id"][0] == "out"
    assert df["result_status"][0] == "done" and df["n"][0] == 1
    assert len(set(df.columns)) == len(df.columns)


def test_foreign_and_odd_values_do_not_fail_the_frame():
    records = [("a", {"s": False, "r": ValueError("plain exception"), "t": "two", "et": "soon"}, None),
               ("b", {"s": True, "r": None, "f": "f", "k": ["not", "a", "dict"], "a": "nope"}, None)]
    df = records_frame(records)
    assert df["error_type"][0] == "ValueError" and df["error_message"][0] == "plain exception"
    assert pd.isna(df["tries"][0]) and pd.isna(df["enqueue_time"][0])
    assert df["status"].tolist() == ["complete" if ok else "failed" for ok in (False, True)]


def test_extra_columns_sit_before_the_errors():
    df = records_frame([_result("a", 1), _result("b", 2)], extra_columns={"retry_of": ["x", None]})
    assert list(df.columns)[-5:] == ["retry_of", "error_type", "error_code", "error_message", "traceback"]
    assert df["retry_of"].tolist()[0] == "x"


def test_gc_paused_restores_the_previous_state():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()


def test_no_records_still_give_typed_base_columns():
    df = records_frame([])
    assert len(df) == 0
    assert list(df.columns) == ["job_id", "function", "batch", "status", "success", "tries", "enqueue_time",
                                "start_time", "finish_time", "queue_seconds", "run_seconds", "error_type",
                                "error_code", "error_message", "traceback"]
    assert str(df["enqueue_time"].dtype) == "datetime64[ns, UTC]" and str(df["tries"].dtype) == "Int64"
