"""tools.convert and tools.benchmark_inference: command-line errors (the conversions are in tests/test_convert.py)."""
import pytest

from tools import _cli, benchmark_inference, convert


def test_convert_requires_its_flags_and_known_formats(tmp_path):
    with pytest.raises(_cli.UsageError, match='missing required flags: --saved-model, --out'):
        convert.main([])
    with pytest.raises(_cli.UsageError, match='--formats must be a non-empty subset of tflite_float32,.*got pb'):
        convert.main(['--saved-model', str(tmp_path), '--out', str(tmp_path / 'o'), '--formats', 'pb'])


def test_convert_reports_a_missing_saved_model_in_one_line(tmp_path, capsys):
    code = convert.main(['--saved-model', str(tmp_path / 'none'), '--out', str(tmp_path / 'o')])
    assert code == _cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert 'saved_model_dir must be a SavedModel directory' in err and str(tmp_path / 'none') in err


def test_benchmark_inference_rejects_bad_lists():
    with pytest.raises(_cli.UsageError, match='--people must be comma-separated positive ints'):
        benchmark_inference.main(['--people', '0'])
    with pytest.raises(_cli.UsageError, match='--internal-batch-size must be comma-separated non-negative ints'):
        benchmark_inference.main(['--internal-batch-size', '8,-1'])
    with pytest.raises(_cli.UsageError, match="--backbones entries must be name:crop_size"):
        benchmark_inference.main(['--backbones', 'mobile_small'])
    with pytest.raises(_cli.UsageError, match='--converted must be a subset of'):
        benchmark_inference.main(['--converted', 'tensorrt'])
    rows = [('b 64px', 'crop_model onnx', 8, 8, 0.5)]
    assert benchmark_inference.format_table(rows).splitlines()[-1] == '| b 64px | crop_model onnx | 8 | 8 | 16.0 | 500.0 |'
