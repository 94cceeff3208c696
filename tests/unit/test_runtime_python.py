"""The Python runtime: finding the model class in model.py, its hooks, and how its errors surface."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from server.core.errors import InvalidInput, ModelError
from server.core.types import TensorSpec
from server.runtimes.base import RuntimeOptions
from server.runtimes.python import ModelContext, PythonRuntime


def model_file(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "1" / "model.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def loaded(tmp_path: Path, source: str, **options) -> PythonRuntime:
    runtime = PythonRuntime()
    runtime.load(model_file(tmp_path, source), RuntimeOptions(**options))
    return runtime


DOUBLER = """
    class Helper:  # no execute(): not a candidate
        pass

    class Doubler:
        def execute(self, inputs):
            return {"OUT": inputs["IN"] * 2}
"""

TWO = """
    class A:
        def execute(self, inputs):
            return {"OUT": inputs["IN"] + 1}

    class B:
        def execute(self, inputs):
            return {"OUT": inputs["IN"] + 2}
"""


def test_the_one_class_with_execute_is_the_model(tmp_path):
    runtime = loaded(tmp_path, DOUBLER)
    out = runtime.execute({"IN": np.array([[1, 2]], np.int32)})
    np.testing.assert_array_equal(out["OUT"], [[2, 4]])


def test_two_model_classes_are_refused_naming_both(tmp_path):
    with pytest.raises(
        InvalidInput, match=r"exactly one class with an execute\(\) method \(found \['A', 'B'\]\).*python_class"
    ):
        loaded(tmp_path, TWO)


def test_python_class_parameter_picks_one_of_several(tmp_path):
    runtime = loaded(tmp_path, TWO, parameters=(("python_class", "B"),))
    np.testing.assert_array_equal(runtime.execute({"IN": np.array([1])})["OUT"], [3])


def test_python_class_naming_no_class_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="model.py has no class 'C'"):
        loaded(tmp_path, TWO, parameters=(("python_class", "C"),))


def test_setup_receives_the_model_context(tmp_path):
    inputs = (TensorSpec("IN", "FP32", (-1, 3)),)
    outputs = (TensorSpec("OUT", "FP32", (-1, 3)),)
    runtime = loaded(
        tmp_path,
        """
        class Model:
            def setup(self, context):
                self.context = context

            def execute(self, inputs):
                return inputs
        """,
        model_name="m",
        version="1",
        parameters=(("k", "5"),),
        inputs=inputs,
        outputs=outputs,
        max_batch_size=4,
    )
    assert runtime._model.context == ModelContext(
        name="m",
        version="1",
        directory=tmp_path / "1",
        parameters={"k": "5"},
        device="cpu",
        inputs=inputs,
        outputs=outputs,
        max_batch_size=4,
    )


def test_a_failing_import_is_invalid_input_ending_with_the_error_line(tmp_path):
    with pytest.raises(InvalidInput) as caught:
        loaded(tmp_path, "import nope\n")
    assert caught.value.message.startswith("model.py failed")
    assert caught.value.message.endswith("ModuleNotFoundError: No module named 'nope'")


def test_a_failing_setup_is_invalid_input_with_the_error_line(tmp_path):
    source = """
        class Model:
            def setup(self, context):
                raise ValueError("bad k")

            def execute(self, inputs):
                return inputs
    """
    with pytest.raises(InvalidInput, match="ValueError: bad k"):
        loaded(tmp_path, source)


RAISES = """
    from server.core.errors import InvalidInput

    class Model:
        def execute(self, inputs):
            kind = int(inputs["KIND"][0])
            if kind == 0:
                raise RuntimeError("segfault-ish")
            if kind == 1:
                raise InvalidInput("row 3 is not an image")
            if kind == 2:
                return [inputs["KIND"]]
            return {"OUT": [1, 2, 3]}
"""


def test_execute_raising_a_plain_exception_is_a_model_error(tmp_path):
    runtime = loaded(tmp_path, RAISES)
    with pytest.raises(ModelError, match=r"execute\(\) failed: RuntimeError: segfault-ish"):
        runtime.execute({"KIND": np.array([0])})


def test_execute_raising_invalid_input_passes_it_through(tmp_path):
    runtime = loaded(tmp_path, RAISES)
    with pytest.raises(InvalidInput, match="^row 3 is not an image$"):
        runtime.execute({"KIND": np.array([1])})


def test_execute_returning_a_non_dict_is_a_model_error(tmp_path):
    runtime = loaded(tmp_path, RAISES)
    with pytest.raises(ModelError, match=r"execute\(\) returned list; it must return a dict"):
        runtime.execute({"KIND": np.array([2])})


def test_execute_outputs_become_numpy_arrays(tmp_path):
    runtime = loaded(tmp_path, RAISES)
    out = runtime.execute({"KIND": np.array([3])})["OUT"]
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [1, 2, 3])


def test_unload_calls_finalize_and_execute_then_fails(tmp_path):
    marker = tmp_path / "finalized"
    runtime = loaded(
        tmp_path,
        f"""
        from pathlib import Path

        class Model:
            def execute(self, inputs):
                return inputs

            def finalize(self):
                Path({str(marker)!r}).write_text("done")
        """,
    )
    runtime.unload()
    assert marker.read_text() == "done"
    with pytest.raises(ModelError, match="not loaded"):
        runtime.execute({})


STREAMER = """
    class Model:
        def execute(self, inputs):
            for i in range(int(inputs["N"][0])):
                yield {"I": [i]}
"""


def test_execute_stream_yields_each_response_as_arrays(tmp_path):
    runtime = loaded(tmp_path, STREAMER)
    responses = list(runtime.execute_stream({"N": np.array([3])}))
    assert [r["I"].tolist() for r in responses] == [[0], [1], [2]]
    assert all(isinstance(r["I"], np.ndarray) for r in responses)


def test_execute_stream_refuses_an_item_that_is_not_a_dict(tmp_path):
    runtime = loaded(tmp_path, "class Model:\n    def execute(self, inputs):\n        yield [1]\n")
    with pytest.raises(ModelError, match="yielded list"):
        list(runtime.execute_stream({}))


def test_processor_parameter_loads_a_deepserve_pipeline_step(tmp_path):
    runtime = PythonRuntime()
    options = RuntimeOptions(
        parameters=(("processor", "classify.topk"), ("k", "1")),
        inputs=(TensorSpec("LOGITS", "FP32", (-1, 3)),),
        outputs=(TensorSpec("INDEX", "INT64", (-1, 1)),),
    )
    runtime.load(tmp_path / "model.py", options)  # the file need not exist
    out = runtime.execute({"LOGITS": np.array([[0.1, 5.0, 0.2]], np.float32)})
    np.testing.assert_array_equal(out["INDEX"], [[1]])


def test_an_unknown_processor_is_refused_listing_the_known_ones(tmp_path):
    with pytest.raises(InvalidInput, match=r"unknown processor 'image.rotate'.*'classify.topk'.*'image.decode_resize'"):
        PythonRuntime().load(tmp_path / "model.py", RuntimeOptions(parameters=(("processor", "image.rotate"),)))


def test_closing_a_stream_early_runs_the_models_own_cleanup(tmp_path):
    marker = tmp_path / "closed"
    runtime = loaded(
        tmp_path,
        f"""
        from pathlib import Path

        class Model:
            def execute(self, inputs):
                try:
                    for i in range(100):
                        yield {{"I": [i]}}
                finally:
                    Path({str(marker)!r}).write_text("closed")
        """,
    )
    stream = runtime.execute_stream({})
    assert next(stream)["I"].tolist() == [0]
    stream.close()
    assert marker.read_text() == "closed"


def test_execute_stream_failing_after_a_response_is_a_model_error(tmp_path):
    runtime = loaded(
        tmp_path,
        """
        class Model:
            def execute(self, inputs):
                yield {"I": [0]}
                raise RuntimeError("lost the GPU")
        """,
    )
    stream = runtime.execute_stream({})
    next(stream)
    with pytest.raises(ModelError, match=r"execute\(\) failed: RuntimeError: lost the GPU"):
        next(stream)
