"""Shared plumbing of the experiments: flags, presets, overrides, the entry point, checks, results files.

Only experiments turn flags into constructor arguments (library code reads no flags). Each experiment defines a
frozen dataclass config with presets ``smoke``, ``default`` (the CPU preset) and ``paper``; ``--set key=value``
overrides single fields, and unknown keys are errors.

Every experiment's ``main`` goes through :func:`run_main` (user errors: one line on stderr and exit status 2, a
traceback only with ``--debug``; Ctrl-C: one line and exit status 130) and writes its ``results.json`` with
:func:`write_results` in the one schema :data:`RESULTS_SCHEMA` describes (validated by :func:`validate_results`):

=================  ===================================================================================
key                content
=================  ===================================================================================
schema_version     int, :data:`RESULTS_SCHEMA_VERSION`
experiment         str, the module name (``metrabs_acae``, ``gcn_weight_sharing``, ...)
preset             str, the ``--preset`` the config started from
config             dict, the resolved config (every field)
seeds              list of int, the training seeds of the run
context            dict: ``machine`` (:func:`machine_context`), ``timings`` ({wall_s, cpu_s} per phase,
                   :class:`PhaseClock`), and whatever else the experiment records (data, motion, training)
results            dict, the experiment's measurements (its docstring says what)
checks             list of {claim: str, holds: bool or null, evidence: str} (:class:`Check`)
=================  ===================================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

from absl import app, flags

from posekit.data import mocap

C = TypeVar('C')


PRESET_NAMES = ('smoke', 'default', 'paper')
"""Every experiment's presets: seconds-to-minutes machinery check, the CPU run, the papers' sizes."""

RESULTS_SCHEMA_VERSION = 1
RESULTS_SCHEMA = {'schema_version': int, 'experiment': str, 'preset': str, 'config': dict, 'seeds': list,
                  'context': dict, 'results': dict, 'checks': list}
"""Top-level keys of results.json and their types (module docstring)."""

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               FileExistsError, OSError)
"""Exceptions that mean "the input or the command is wrong": reported in one line (no traceback)."""


STRATEGIES = ('default', 'mirrored', 'multi_worker')
"""``--strategy``: one device; every local GPU (or ``--replicas`` logical CPU devices) of one machine; several
processes or machines described by the standard ``TF_CONFIG`` environment variable."""


def define_common_flags(default_out: str, mocap: bool = True, test_mocap: bool = True, strategy: bool = True):
    """Defines --preset, --out, --seed, --set, --debug and (when the experiment uses them) --mocap-dir,
    --test-mocap-dir, --strategy and --replicas in absl.flags."""
    if strategy:
        flags.DEFINE_enum('strategy', 'default', list(STRATEGIES),
                          'tf.distribute strategy: default (one device), mirrored (all GPUs of this machine, or '
                          '--replicas logical CPU devices), multi_worker (the processes/machines of TF_CONFIG).')
        flags.DEFINE_integer('replicas', 0, 'mirrored on a machine without GPUs: split the CPU into this many '
                             'logical devices (0: one replica per GPU, or the CPU).', lower_bound=0)
    flags.DEFINE_enum('preset', 'default', list(PRESET_NAMES), 'Configuration preset.')
    flags.DEFINE_string('out', default_out, 'Output directory for results, checkpoints, plots.')
    if mocap:
        flags.DEFINE_string(
            'mocap-dir', 'auto',
            "Folder of BVH training motion. 'auto': ../shared/data/cmu_mocap if present, else the "
            "embedded procedural motion; 'procedural' forces the embedded motion.")
    if test_mocap:
        flags.DEFINE_string(
            'test-mocap-dir', None,
            'Folder of BVH files held out as the external test set (all of it is used for testing).')
    flags.DEFINE_integer('seed', 0, 'Random seed (data order, augmentation, initialisation).', lower_bound=0)
    flags.DEFINE_multi_string('set', [], 'Override a config field: --set key=value (repeatable).')
    flags.DEFINE_bool('debug', False, 'Show the full traceback of errors.')


def resolve_config(presets: Mapping[str, C], preset: str, overrides: Sequence[str]) -> C:
    """The preset's config with ``--set`` overrides applied (errors name the preset or key)."""
    return apply_overrides(get_preset(presets, preset), overrides)


def test_mocap_dir(value: Optional[str]) -> Optional[str]:
    """``--test-mocap-dir``: None, or an existing folder (else FileNotFoundError naming it)."""
    if value and not os.path.isdir(value):
        raise FileNotFoundError(f'--test-mocap-dir {value!r} is not a directory')
    return value or None


def stderr_log(message: str) -> None:
    """The experiments' log: one line to stderr, flushed."""
    print(message, file=sys.stderr, flush=True)


def run_main(main: Callable[[List[str]], Any], name: Optional[str] = None) -> None:
    """``absl.app.run(main)`` with the experiments' error manners.

    User errors (a flag that does not parse, :data:`USER_ERRORS` such as a bad ``--set`` value or a missing
    folder) print ``<name>: error: <message>`` on stderr and exit with status 2; with ``--debug`` the traceback follows. Ctrl-C prints one line
    and exits with status 130. Anything else is a bug: the traceback is printed and the status is 1.
    """
    name = name or os.path.basename(sys.argv[0]).replace('.py', '')

    def wrapped(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            print(f'{name}: interrupted', file=sys.stderr, flush=True)
            _exit_now(EXIT_INTERRUPTED)
        except USER_ERRORS as e:
            debug = flags.FLAGS['debug'].value if 'debug' in flags.FLAGS else False
            if debug:
                traceback.print_exc()
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f'{name}: error: {message}', file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        except Exception as e:  # noqa: BLE001 -- the training loop's interruption is not a bug
            if type(e).__name__ != 'TrainingInterrupted':
                raise
            print(f'{name}: {e}', file=sys.stderr, flush=True)
            _exit_now(EXIT_INTERRUPTED)

    def parse_flags(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f'{name}: error: {e}', file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    app.run(wrapped, flags_parser=parse_flags)


def _exit_now(code: int) -> None:
    """Exits at once (the checkpoint is written): skips interpreter teardown, where TensorFlow's and tf.data's
    threads can hold the process for many seconds."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


RUN_IGNORE = ('log_every', 'checkpoint_every', 'data_workers', 'eval_batch', 'export', 'progress')
"""Config keys that may differ when a run is resumed: they change logging, speed or outputs, not results."""


def check_writable(out) -> str:
    """Creates ``out`` and checks that files can be written there, before any work (OSError naming it)."""
    out = os.fspath(out)
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix='.write-probe-')
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f'--out {out!r} is not a writable folder ({e.strerror or e})') from None
    return out


def folder_fingerprint(folder: Optional[str]) -> Optional[Dict[str, Any]]:
    """A cheap fingerprint of a motion folder: its BVH files' relative names and sizes (None for None)."""
    if not folder:
        return None
    files = []
    for root, _, names in os.walk(folder):
        for n in sorted(names):
            if n.lower().endswith('.bvh'):
                path = os.path.join(root, n)
                files.append(f'{os.path.relpath(path, folder)}:{os.path.getsize(path)}')
    import hashlib
    return dict(path=os.path.abspath(folder), n_files=len(files),
                sha256=hashlib.sha256('\n'.join(sorted(files)).encode()).hexdigest())


@contextlib.contextmanager
def run_directory(out, experiment: str, config, seeds: Sequence[int], data: Optional[Mapping] = None,
                  ignore: Sequence[str] = RUN_IGNORE, chief: bool = True):
    """The experiments' guard of ``--out``: writable (checked first), one writer
    (:class:`posekit.train.rundir.RunLock`), and one run: the resolved config, seeds and data fingerprints are
    recorded in ``run.json`` and a later run in the folder must match them except for ``ignore`` keys
    (:func:`posekit.train.rundir.start_run`, ConfigMismatchError listing the keys). A non-``chief`` worker of a
    multi-worker run only checks that it can write to ``out`` (its own scratch folder)."""
    from posekit.train import rundir
    check_writable(out)
    if not chief:  # a non-chief worker neither locks nor records: the chief does
        yield
        return
    with rundir.RunLock(out, description=f'{experiment} ' + ' '.join(sys.argv[1:])):
        identity = dict(experiment=experiment, seeds=[int(s) for s in seeds],
                        config=dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config))
        rundir.start_run(out, identity, data=dict(data or {}), ignore=[f'config.{k}' for k in ignore])
        yield


# ----------------------------------------------------------------------------------------------
# tf.distribute
# ----------------------------------------------------------------------------------------------

def tf_config_task() -> Optional[Dict[str, Any]]:
    """``{'type', 'index', 'cluster'}`` of the ``TF_CONFIG`` environment variable, or None when it is unset.

    Read without TensorFlow (the data can be prepared before TensorFlow starts). ValueError naming the variable
    when it is not the standard JSON ``{"cluster": {...}, "task": {"type": ..., "index": ...}}``.
    """
    text = os.environ.get('TF_CONFIG')
    if not text:
        return None
    try:
        value = json.loads(text)
        task, cluster = value['task'], value['cluster']
        return dict(type=str(task['type']), index=int(task['index']), cluster=dict(cluster))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f'TF_CONFIG must be JSON {{"cluster": {{...}}, "task": {{"type": ..., "index": ...}}}}; '
                         f'got {text!r} ({e})') from None


def is_chief_process(strategy_name: str) -> bool:
    """Whether this process writes the run's files: always, except a non-chief worker of ``multi_worker`` (the
    chief is task 'chief', or worker 0 when the cluster has no chief, as in tf.distribute)."""
    if strategy_name != 'multi_worker':
        return True
    task = tf_config_task()
    if task is None:
        raise ValueError('--strategy=multi_worker needs the TF_CONFIG environment variable (see the README, '
                         '"Training on several GPUs or machines")')
    return task['type'] == 'chief' or (task['type'] == 'worker' and task['index'] == 0
                                       and 'chief' not in task['cluster'])


def worker_scratch(out: str, strategy_name: str) -> str:
    """Where this process writes: ``out`` for the chief; for another worker a folder of its own outside ``out``
    (only the chief's files are in ``--out``; workers read the chief's checkpoints from ``out``)."""
    if is_chief_process(strategy_name):
        return out
    import hashlib
    task = tf_config_task()
    digest = hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f'posekit-{task["type"]}{task["index"]}-{digest}')


def configure_determinism(deterministic: bool, log: Callable[[str], None] = None) -> bool:
    """Before TensorFlow runs its first op: with ``deterministic``, one inter-op thread (ops run one at a
    time, each still multi-threaded inside). Two same-seed runs of the default MeTRAbs preset differed in the
    last bits after a few steps with TensorFlow's default of concurrent ops (the CPU kernels' reductions are
    blocked by the threads free when they start), and were bit-identical with one inter-op thread
    (``tf.config.experimental.enable_op_determinism()``, which the training loop also calls, did not suffice
    on the CPU). Returns whether the setting took effect (False, with a warning through ``log``, when
    TensorFlow was already initialised, e.g. inside a test process)."""
    if not deterministic:
        return False
    import tensorflow as tf
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        if log is not None:
            log('warning: TensorFlow is already initialised in this process; its inter-op threads stay as they '
                'are and same-seed runs may differ in the last bits')
        return False
    return True


def make_strategy(name: str, replicas: int = 0):
    """The tf.distribute strategy ``name`` (:data:`STRATEGIES`); call after the data is prepared (rendering forks
    worker processes) and before any model is built.

    ``mirrored``: every GPU of the machine, or, without GPUs and with ``replicas`` > 1, that many logical CPU
    devices (to test data parallelism on a CPU). ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the
    cluster of ``TF_CONFIG``.
    """
    import tensorflow as tf
    if name not in STRATEGIES:
        raise ValueError(f'--strategy must be one of {STRATEGIES}, got {name!r}')
    if name == 'default':
        return tf.distribute.get_strategy()
    if name == 'multi_worker':
        is_chief_process(name)  # checks TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices('GPU')
    if gpus or replicas <= 1:
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices('CPU')[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as e:
        raise ValueError(f'--replicas {replicas}: TensorFlow was initialised before the logical CPU devices could '
                         f'be made ({e})') from None
    return tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(replicas)])


# ----------------------------------------------------------------------------------------------
# Checks, timings, machine, results
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Check:
    """One acceptance check of an experiment: the claim, whether it holds (None: not measurable here) and the
    numbers that decide it."""

    claim: str
    holds: Optional[bool]
    evidence: str = ''

    def __post_init__(self):
        if not isinstance(self.claim, str) or not self.claim:
            raise ValueError(f'claim must be a non-empty str, got {self.claim!r}')
        if self.holds is not None and not isinstance(self.holds, bool):
            object.__setattr__(self, 'holds', bool(self.holds))

    def to_dict(self) -> Dict[str, Any]:
        return dict(claim=self.claim, holds=self.holds, evidence=self.evidence)

    def markdown(self) -> str:
        verdict = {True: 'holds', False: 'does NOT hold', None: 'not measured'}[self.holds]
        return f'- **{verdict}**: {self.claim}' + (f' ({self.evidence})' if self.evidence else '')


class PhaseClock:
    """Wall-clock and CPU seconds per phase (CPU: this process and its finished child processes).

    On a machine shared with other jobs the wall time grows with the load while the CPU time stays about the
    same; CPU seconds / cores bounds the wall time on an idle machine from below.
    """

    def __init__(self):
        self.wall: Dict[str, float] = {}
        self.cpu: Dict[str, float] = {}
        self._start_wall, self._start_cpu = time.perf_counter(), self.cpu_seconds()

    @staticmethod
    def cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    @contextlib.contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), self.cpu_seconds()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + self.cpu_seconds() - cpu

    def total_wall(self) -> float:
        return time.perf_counter() - self._start_wall

    def summary(self) -> Dict[str, Dict[str, float]]:
        """{'wall_s': {phase: s, ..., 'total': s}, 'cpu_s': {...}} (since the clock was made)."""
        wall = dict(self.wall, total=time.perf_counter() - self._start_wall)
        cpu = dict(self.cpu, total=self.cpu_seconds() - self._start_cpu)
        return {'wall_s': {k: round(v, 1) for k, v in wall.items()},
                'cpu_s': {k: round(v, 1) for k, v in cpu.items()}}


def machine_context() -> Dict[str, Any]:
    """The machine a result was measured on: cores, load average, Python, TF, Keras and NumPy versions."""
    import numpy as np
    context = dict(cpus=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
                   numpy=np.__version__)
    if hasattr(os, 'getloadavg'):
        context['load_average'] = [round(v, 2) for v in os.getloadavg()]
    for module in ('tensorflow', 'keras'):
        if module in sys.modules:
            context[module] = getattr(sys.modules[module], '__version__', '?')
    return context


def format_number(value, spec: str = '.1f', missing: str = '') -> str:
    """A number for a report: ``format(value, spec)``; None or NaN -> ``missing``; non-numbers as str."""
    if value is None:
        return missing
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            return missing
        return format(value, spec)
    try:
        import numpy as np
        if isinstance(value, np.generic):
            return format_number(value.item(), spec, missing)
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def write_results(out, experiment: str, preset: str, config, seeds: Sequence[int], results: Mapping,
                  checks: Sequence[Check], context: Optional[Mapping] = None, clock: Optional[PhaseClock] = None):
    """Writes ``<out>/results.json`` in the one schema (module docstring); returns the written dict."""
    context = dict(context or {})
    context.setdefault('machine', machine_context())
    if clock is not None:
        context['timings'] = clock.summary()
    record = dict(schema_version=RESULTS_SCHEMA_VERSION, experiment=experiment, preset=preset,
                  config=dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config),
                  seeds=[int(s) for s in seeds], context=context, results=dict(results),
                  checks=[c.to_dict() if isinstance(c, Check) else dict(c) for c in checks])
    validate_results(record)
    write_json(pathlib.Path(out) / 'results.json', record)
    return record


def validate_results(record: Mapping) -> None:
    """Raises ``ValueError`` naming the key when ``record`` is not a results.json of the one schema."""
    if not isinstance(record, Mapping):
        raise ValueError(f'results must be a dict, got {type(record).__name__}')
    for key, kind in RESULTS_SCHEMA.items():
        if key not in record:
            raise ValueError(f'results.json lacks the key {key!r} (schema: {list(RESULTS_SCHEMA)})')
        if not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool)):
            raise ValueError(f'results.json key {key!r} must be a {kind.__name__}, got {type(record[key]).__name__}')
    extra = sorted(set(record) - set(RESULTS_SCHEMA))
    if extra:
        raise ValueError(f'results.json has keys outside the schema: {extra}')
    if record['schema_version'] != RESULTS_SCHEMA_VERSION:
        raise ValueError(f'results.json schema_version {record["schema_version"]}, expected {RESULTS_SCHEMA_VERSION}')
    if record['preset'] not in PRESET_NAMES:
        raise ValueError(f'results.json preset must be one of {PRESET_NAMES}, got {record["preset"]!r}')
    if not all(isinstance(s, int) for s in record['seeds']) or not record['seeds']:
        raise ValueError(f'results.json seeds must be a non-empty list of ints, got {record["seeds"]!r}')
    for k, check in enumerate(record['checks']):
        if not isinstance(check, Mapping) or set(check) != {'claim', 'holds', 'evidence'}:
            raise ValueError(f'results.json checks[{k}] must have exactly claim, holds, evidence; got {check!r}')
        if not isinstance(check['claim'], str) or check['holds'] not in (True, False, None) \
                or not isinstance(check['evidence'], str):
            raise ValueError(f'results.json checks[{k}] has a wrong type: {check!r}')
    for key in ('machine', 'timings'):
        if key not in record['context']:
            raise ValueError(f'results.json context lacks {key!r}')


def resolve_mocap_dir(value: Optional[str]) -> Optional[str]:
    """'auto' -> ../shared/data/cmu_mocap if present else None; 'procedural'/'' -> None."""
    if value in (None, '', 'procedural'):
        return None
    if value == 'auto':
        return mocap.default_mocap_dir()
    if not os.path.isdir(value):
        raise FileNotFoundError(f'--mocap-dir {value!r} is not a directory')
    return value


def _coerce(value: str, current: Any, key: str):
    if isinstance(current, bool):
        if value.lower() in ('1', 'true', 'yes'):
            return True
        if value.lower() in ('0', 'false', 'no'):
            return False
        raise ValueError(f'--set {key}: expected a boolean, got {value!r}')
    if isinstance(current, (int, float)):
        try:
            return type(current)(value)
        except ValueError:
            raise ValueError(f'--set {key}: expected {"an int" if isinstance(current, int) else "a number"}, '
                             f'got {value!r}') from None
    if isinstance(current, tuple):
        items = [v for v in value.split(',') if v]
        if current and not isinstance(current[0], str):
            return tuple(type(current[0])(v) for v in items)
        return tuple(items)
    if current is None:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return type(current)(value)


def apply_overrides(config: C, overrides: Sequence[str]) -> C:
    """A copy of the frozen dataclass ``config`` with ``key=value`` overrides applied.

    Raises:
      ValueError: malformed override or a key the config does not have (listing the valid keys).
    """
    fields = {f.name for f in dataclasses.fields(config)}
    changes: Dict[str, Any] = {}
    for item in overrides:
        if '=' not in item:
            raise ValueError(f'--set expects key=value, got {item!r}')
        key, value = item.split('=', 1)
        key = key.strip().replace('-', '_')
        if key not in fields:
            raise ValueError(f'unknown config key {key!r}; valid keys: {sorted(fields)}')
        changes[key] = _coerce(value, getattr(config, key), key)
    return dataclasses.replace(config, **changes)


def get_preset(presets: Mapping[str, C], name: str) -> C:
    if name not in presets:
        raise ValueError(f'unknown preset {name!r}; presets: {sorted(presets)}')
    return presets[name]


def atomic_write_text(path, text: str):
    """Writes ``text`` to ``path`` via a temporary file and rename (never a half-written file)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    except OSError as e:
        raise OSError(e.errno, f'cannot write {path}: {e.strerror or e}') from e
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(e.errno, f'cannot write {path}: {e.strerror or e}') from e
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + '\n')


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    raise TypeError(f'not JSON serialisable: {type(o).__name__}')


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   headers: Optional[Sequence[str]] = None, floatfmt: str = '.1f') -> str:
    """A GitHub markdown table of ``rows`` (dicts) restricted to ``columns``."""
    headers = list(headers or columns)
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, '')
            if v is None:
                cells.append('')
            elif isinstance(v, float):
                cells.append(format(v, floatfmt))
            else:
                cells.append(str(v))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
