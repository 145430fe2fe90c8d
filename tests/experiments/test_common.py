"""Tests of experiments.common: the entry point's error manners, checks, the results schema, flags, and the
rule that experiments do not import each other."""
import ast
import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

from experiments import common

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENTS = ('metrabs_acae', 'gcn_weight_sharing', 'mixed_precision', 'parallel_video')


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_user_errors_are_one_line_with_status_2(experiment, tmp_path):
    bad_key = _run(f'experiments.{experiment}', '--preset=smoke', f'--out={tmp_path / "a"}', '--set', 'nope=1')
    assert bad_key.returncode == 2, bad_key.stderr[-2000:]
    assert bad_key.stderr.strip().splitlines()[-1].startswith(f"{experiment}: error: unknown config key 'nope'")
    assert 'Traceback' not in bad_key.stderr
    debug = _run(f'experiments.{experiment}', '--preset=smoke', f'--out={tmp_path / "b"}', '--set', 'nope=1',
                 '--debug')
    assert debug.returncode == 2 and 'Traceback' in debug.stderr


def test_bad_values_name_their_flag_or_key(tmp_path):
    wrong_type = _run('experiments.metrabs_acae', '--preset=smoke', f'--out={tmp_path}', '--set', 'stage1_steps=abc')
    assert wrong_type.returncode == 2
    assert "--set stage1_steps: expected an int, got 'abc'" in wrong_type.stderr
    negative = _run('experiments.metrabs_acae', '--preset=smoke', f'--out={tmp_path}', '--seed=-1')
    assert negative.returncode == 2 and 'Traceback' not in negative.stderr
    assert negative.stderr.strip().startswith('metrabs_acae: error: flag --seed=-1')
    missing = _run('experiments.gcn_weight_sharing', '--preset=smoke', f'--out={tmp_path}',
                   '--test-mocap-dir=/no/such/folder')
    assert missing.returncode == 2 and "--test-mocap-dir '/no/such/folder' is not a directory" in missing.stderr
    assert not list(tmp_path.iterdir())  # refused before any work


def test_mixed_precision_reads_its_test_mocap_flag():
    """Issue 16: the flag is accepted only because it is used (the external motion becomes the 'test' split)."""
    run = _run('experiments.mixed_precision', '--helpfull')
    assert '--mocap-dir' in run.stdout and '--test-mocap-dir' in run.stdout and '--strategy' not in run.stdout
    source = (pathlib.Path(common.__file__).parent / 'mixed_precision.py').read_text()
    assert "common.test_mocap_dir(FLAGS['test-mocap-dir'].value)" in source
    assert "splits['test'] = mocap.load_mocap_folder(test_mocap_dir" in source


def test_check_and_results_schema(tmp_path):
    check = common.Check('a claim', True, '1 < 2')
    assert check.to_dict() == {'claim': 'a claim', 'holds': True, 'evidence': '1 < 2'}
    assert common.Check('x', None).markdown() == '- **not measured**: x'
    with pytest.raises(ValueError, match="claim must be a non-empty str, got ''"):
        common.Check('', True)

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = 3

    clock = common.PhaseClock()
    with clock.phase('work'):
        pass
    record = common.write_results(tmp_path, 'demo', 'smoke', Config(), [0, 1], {'records': []}, [check],
                                  {'note': 'x'}, clock)
    on_disk = json.loads((tmp_path / 'results.json').read_text())
    assert on_disk == json.loads(json.dumps(record))
    common.validate_results(on_disk)
    assert on_disk['config'] == {'steps': 3} and set(on_disk['context']['timings']['wall_s']) == {'work', 'total'}
    for change, message in (({'checks': [{'claim': 'c', 'holds': 'yes', 'evidence': ''}]}, r'checks\[0\] has a wrong type'),
                            ({'preset': 'quick'}, "preset must be one of"),
                            ({'seeds': []}, 'seeds must be a non-empty list'),
                            ({'extra': 1}, r"keys outside the schema: \['extra'\]"),
                            ({'results': []}, "key 'results' must be a dict")):
        broken = dict(on_disk, **change)
        with pytest.raises(ValueError, match=message):
            common.validate_results(broken)
    without = {k: v for k, v in on_disk.items() if k != 'checks'}
    with pytest.raises(ValueError, match="lacks the key 'checks'"):
        common.validate_results(without)


def test_fmt():
    assert common.format_number(1.234) == '1.2' and common.format_number(None) == '' and common.format_number(float('nan'), missing='-') == '-'
    assert common.format_number(3, 'd') == '3' and common.format_number('text') == 'text'


def _imports(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f'{node.module}.{a.name}' for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_experiment_imports_another_experiment():
    """Experiments share only experiments.common; helper modules (metrabs_acae_eval) import no experiment."""
    for path in sorted((REPO / 'experiments').glob('*.py')):
        imported = {n for n in _imports(path) if n.startswith('experiments.')}
        others = {f'experiments.{e}' for e in EXPERIMENTS} - {f'experiments.{path.stem}'}
        assert not imported & others, (path.name, imported & others)
    assert not any(n.startswith('experiments.metrabs_acae') and n != 'experiments.metrabs_acae_eval'
                   for n in _imports(REPO / 'experiments' / 'metrabs_acae_eval.py'))


def test_setup_installs_only_the_library():
    text = (REPO / 'setup.py').read_text()
    assert 'find_packages(include=["posekit", "posekit.*"])' in text and '"experiments"' not in text
