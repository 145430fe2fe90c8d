"""Grep-level facts (issue 16): one implementation each of the camera math, used everywhere.

The pinhole projection in TensorFlow, the crop-camera aiming (the upright camera turned towards a ray
and its focal length fitted to a box) and the field-of-view intrinsics are defined once, in
``posekit/geometry.py``; training (synth, augment), the losses, the export and the tools call them.
"""
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'posekit'


def sources(*roots):
    for root in roots:
        for path in sorted((REPO / root).rglob('*.py')):
            yield path.relative_to(REPO).as_posix(), path.read_text(encoding='utf-8')


def matches(pattern, *roots):
    """{file: count} of the regex in the Python files under ``roots`` (files with no match left out)."""
    found = {}
    for name, text in sources(*roots):
        n = len(re.findall(pattern, text, flags=re.MULTILINE))
        if n:
            found[name] = n
    return found


def test_one_pinhole_projection():
    # Dividing camera-frame x, y by z (the projection) happens in geometry only: project_tf and the numpy
    # Camera, whose methods are the numpy counterpart (camera_to_image).
    assert matches(r'^def (project|project_tf|project_to_image|normalized_image_coords)\(', 'posekit', 'tools') == {
        'posekit/geometry.py': 1}
    divisions = matches(r'\[\.\.\., :2\] / [\w.]*\[\.\.\., 2:\]', 'posekit', 'tools')
    assert set(divisions) <= {'posekit/geometry.py'}
    for name in ('posekit/export.py', 'posekit/train/losses_metrabs.py', 'posekit/data/augment.py'):
        assert 'geometry.project_tf(' in (REPO / name).read_text(), name


def test_one_crop_aiming():
    # The aiming math (the upright rotation by cross products, the fitted focal length) is written once.
    assert matches(r'^def upright_rotation\(', 'posekit') == {'posekit/geometry.py': 1}
    # synth.crop_camera is the world-frame adapter of the rendered crops: it calls geometry.crop_camera.
    assert matches(r'^def crop_camera\(', 'posekit') == {'posekit/geometry.py': 1, 'posekit/data/synth.py': 1}
    # (synth's one cross product is the body's facing direction, not a camera.)
    assert matches(r'_cross\(|linalg\.cross|np\.cross\(', 'posekit') == {'posekit/geometry.py': 8,
                                                                          'posekit/data/synth.py': 1}
    assert 'def _facing_yaw' in (REPO / 'posekit/data/synth.py').read_text()
    assert matches(r'1\.0 \+ (box_)?margin', 'posekit') == {'posekit/geometry.py': 1}
    users = {'posekit/export.py': 'geometry.crop_camera(', 'posekit/data/augment.py': 'geometry.crop_camera(',
             'posekit/data/synth.py': 'geometry.crop_camera('}
    for name, call in users.items():
        assert call in (REPO / name).read_text(), name


def test_one_field_of_view_formula():
    assert matches(r'\.tan\(', 'posekit', 'tools') == {'posekit/geometry.py': 1}  # code, not docstrings
    for name in ('posekit/export.py', 'tools/demo.py', 'posekit/data/synth.py'):
        assert 'geometry.fov_intrinsics(' in (REPO / name).read_text(), name


def test_one_left_right_rule():
    assert matches(r'^def joint_sides\(', 'posekit', 'tools') == {'posekit/skeletons.py': 1,
                                                                   'posekit/eval/acae_analysis.py': 1}
    assert 'skeletons.joint_sides(' in (REPO / 'posekit/eval/acae_analysis.py').read_text()
    assert 'skeletons.joint_sides(' in (REPO / 'tools/demo.py').read_text()


def test_losses_do_not_import_models():
    text = (REPO / 'posekit/train/losses_metrabs.py').read_text()
    assert not re.search(r'^\s*(from|import) posekit\.models', text, flags=re.MULTILINE)


TIMING_USERS = ('posekit/train/precision.py', 'experiments/mixed_precision.py', 'tools/benchmark_precision.py',
                'tools/benchmark_training.py')


def test_one_timing_helper():
    # Interleaved step timing, its statistics and the worker processes taking turns live in posekit/train/timing.py;
    # the policy choice, the mixed-precision study and both benchmarks call it and time no step themselves.
    for name in TIMING_USERS:
        text = (REPO / name).read_text()
        assert re.search(r'timing\.(interleave|run_jobs_in_turns)\(', text), name
        assert not re.search(r'np\.(median|percentile)\(|select\.select\(|os\.wait4\(', text), name
    assert matches(r'os\.wait4\(|select\.select\(', 'posekit', 'experiments', 'tools') == {'posekit/train/timing.py': 2}
    for name in ('posekit/train/precision.py', 'tools/benchmark_precision.py'):  # no clock of their own
        assert 'perf_counter' not in (REPO / name).read_text(), name


def test_one_minimum_speedup():
    # The threshold of the policy choice is named once (precision.MIN_SPEEDUP) and written nowhere else.
    assert matches(r'^MIN_SPEEDUP = ', 'posekit', 'experiments', 'tools') == {'posekit/train/precision.py': 1}
    assert matches(r'\b1\.05\b', 'posekit/train') == {'posekit/train/precision.py': 1}
    for name in TIMING_USERS[1:]:
        assert not re.search(r'\b1\.05\b', (REPO / name).read_text()), name
