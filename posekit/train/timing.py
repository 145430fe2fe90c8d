"""Step timing: several candidates measured side by side (interleaved), and their statistics.

On a machine whose load changes (shared CPUs), timing one candidate after the other turns a change of
load into a difference between the candidates. posekit therefore times candidates (precision policies,
model variants) in turns, so a change of load hits all of them alike, and compares medians:

- :func:`interleave` (one process): rounds in which every candidate makes ``calls`` timed calls in
  turn, after ``warmup`` untimed calls each; returns each candidate's per-call durations.
- :func:`run_in_turns` (one process per candidate, e.g. to measure each one's peak memory apart): the
  parent passes a token between worker processes; a worker computes only while it holds the token and
  gives it back through its :class:`Turn`, for example every ``turn_seconds`` of training with a
  :class:`StepRecorder` (a training-loop callback that records per-step wall times). The workers set up
  concurrently; the token is first granted once every live worker waits for it, then first come, first
  served (alternation for two workers).
- :func:`summarize` -> :class:`StepStats` (median, p10-p90 spread, interquartile range, min and max, in
  ms), :func:`speedups` (the reference's median over each candidate's median) and :func:`round_speedups`
  (one ratio of medians per interleaved round: the spread of the speed-up over rounds).
- :func:`step_part_functions` and :func:`time_step_parts`: a training step cut into forward, loss,
  backward and optimizer parts on one fixed batch; each part is timed as the minimum over repeats
  (contention only adds time) and the parts are differences of cumulative functions (:func:`step_parts_ms`).

Users: ``posekit.train.precision.choose_policy``, ``experiments.mixed_precision``,
``tools/benchmark_precision.py`` and ``tools/benchmark_training.py``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import traceback
import select
import subprocess
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

MS_PER_S = 1000.0
#: Percentiles of the spread and of the interquartile range in :class:`StepStats`.
SPREAD_PERCENTILES = (10.0, 90.0)
IQR_PERCENTILES = (25.0, 75.0)
#: Messages of the token protocol, one line each: worker -> parent READY (set up), YIELD (turn over),
#: DONE (finished); parent -> worker GO (your turn).
READY, YIELD, DONE, GO = b'ready', b'yield', b'done', b'go'
#: ``ru_maxrss`` is in KiB on Linux.
KIB_PER_MIB = 1024.0
#: Longest wait in ``select`` before the parent checks the deadline again, seconds.
POLL_S = 5.0
#: :func:`time_step_parts` calls a part function faster than this several times per repeat (at most
#: ``STEP_PART_MAX_CALLS`` times), seconds.
STEP_PART_TURN_S = 0.25
STEP_PART_MAX_CALLS = 4
#: The cumulative functions of :func:`step_part_functions`, in order.
STEP_PART_FUNCTIONS = ('forward', 'forward_loss', 'forward_loss_gradients', 'full_step')


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}; received {name}={value!r}')
    return int(value)


# ------------------------------------------------------------------------------------------ statistics
@dataclasses.dataclass(frozen=True)
class StepStats:
    """Statistics of one candidate's durations, in ms.

    Attributes:
      n: number of durations.
      median_ms: their median.
      spread_ms: (10th, 90th) percentiles (``SPREAD_PERCENTILES``).
      iqr_ms: (25th, 75th) percentiles.
      min_ms, max_ms: the extremes.
    """
    n: int
    median_ms: float
    spread_ms: Tuple[float, float]
    iqr_ms: Tuple[float, float]
    min_ms: float
    max_ms: float


def summarize(seconds) -> StepStats:
    """:class:`StepStats` of durations ``seconds`` (any shape, seconds; flattened).

    Raises:
      ValueError: no durations, or a negative or non-finite one.
    """
    values = np.asarray(seconds, np.float64).ravel()
    if values.size == 0:
        raise ValueError('seconds must hold at least one duration; received an empty sequence')
    bad = values[~(np.isfinite(values) & (values >= 0))]
    if bad.size:
        raise ValueError(f'seconds must be finite and >= 0; received {bad[:3].tolist()}')
    ms = values * MS_PER_S
    p_low, q_low, median, q_high, p_high = np.percentile(ms, [SPREAD_PERCENTILES[0], IQR_PERCENTILES[0], 50.0,
                                                              IQR_PERCENTILES[1], SPREAD_PERCENTILES[1]])
    return StepStats(int(ms.size), float(median), (float(p_low), float(p_high)), (float(q_low), float(q_high)),
                     float(ms.min()), float(ms.max()))


def speedups(medians: Mapping[str, object], reference: str) -> Dict[str, float]:
    """``{name: reference median / name's median}``: above 1 where a candidate is faster than the reference.

    Args:
      medians: ``{name: StepStats or median time}`` (any time unit, the same for all).
      reference: the name of the reference candidate.
    """
    if reference not in medians:
        raise ValueError(f'reference must be one of {sorted(medians)}; received reference={reference!r}')
    value = {name: float(m.median_ms if isinstance(m, StepStats) else m) for name, m in medians.items()}
    for name, median in value.items():
        if not median > 0:
            raise ValueError(f'medians must be positive; received {name}={median!r}')
    return {name: value[reference] / median for name, median in value.items()}


def round_speedups(reference_s, reference_rounds, candidate_s, candidate_rounds) -> np.ndarray:
    """Per interleaved round, the reference's median duration over the candidate's (rounds both ran).

    Args:
      reference_s, candidate_s: durations (seconds) of the reference's and the candidate's timed calls.
      reference_rounds, candidate_rounds: the round index of each duration (e.g. ``StepRecorder.rounds``).

    Returns:
      float64 [R]: one speed-up per round index present in both, in increasing round order (empty if none).
    """
    out, per = [], []
    for seconds, rounds, name in ((reference_s, reference_rounds, 'reference'), (candidate_s, candidate_rounds,
                                                                                  'candidate')):
        seconds, rounds = np.asarray(seconds, np.float64).ravel(), np.asarray(rounds).ravel()
        if seconds.shape != rounds.shape:
            raise ValueError(f'{name}_s and {name}_rounds must have the same length; received {seconds.size} and '
                             f'{rounds.size}')
        per.append({int(r): float(np.median(seconds[rounds == r])) for r in np.unique(rounds)})
    for r in sorted(set(per[0]) & set(per[1])):
        if not per[1][r] > 0:
            raise ValueError(f'candidate durations must be positive; round {r} has median {per[1][r]!r}')
        out.append(per[0][r] / per[1][r])
    return np.asarray(out, np.float64)


# --------------------------------------------------------------------------------------- one process
def interleave(candidates: Mapping[str, Callable[[], object]], rounds: int, calls: int = 1, warmup: int = 0,
               clock: Callable[[], float] = time.perf_counter,
               after_round: Optional[Callable[[int, Dict[str, np.ndarray]], None]] = None) -> Dict[str, np.ndarray]:
    """Times candidates side by side: ``rounds`` rounds of ``calls`` timed calls of each candidate in turn.

    Every candidate first makes ``warmup`` untimed calls (tracing, caches), all before the first round;
    then each round runs the candidates in the mapping's order. A call must block until its work is done
    (e.g. fetch a result with ``.numpy()``).

    Args:
      candidates: ``{name: zero-argument callable}``.
      rounds, calls: rounds (>= 1) and timed calls per candidate per round (>= 1).
      warmup: untimed calls per candidate before the first round (>= 0).
      clock: seconds (``time.perf_counter``; a fake clock in tests).
      after_round: optional ``after_round(round_index, durations)`` called after each round with the
        durations measured so far (progress logging).

    Returns:
      ``{name: float64 array [rounds, calls]}``, the seconds of each timed call.
    """
    if not candidates:
        raise ValueError('candidates must name at least one callable; received an empty mapping')
    rounds, calls = _check_int('rounds', rounds, 1), _check_int('calls', calls, 1)
    warmup = _check_int('warmup', warmup, 0)
    for name, function in candidates.items():
        if not callable(function):
            raise ValueError(f'candidates must map names to callables; received {name}={function!r}')
        for _ in range(warmup):
            function()
    durations = {name: np.zeros((rounds, calls)) for name in candidates}
    for r in range(rounds):
        for name, function in candidates.items():
            for c in range(calls):
                start = clock()
                function()
                durations[name][r, c] = clock() - start
        if after_round is not None:
            after_round(r, {name: d[:r + 1] for name, d in durations.items()})
    return durations


# -------------------------------------------------------------------------------- one process each
class Turn:
    """A worker's end of the token protocol of :func:`run_in_turns` (one line per message over two pipes).

    Args:
      read_fd, write_fd: the pipe ends the parent passed to the worker (parent -> worker, worker -> parent).
    """

    def __init__(self, read_fd: int, write_fd: int):
        self._read = os.fdopen(read_fd, 'rb', buffering=0)
        self._write = os.fdopen(write_fd, 'wb', buffering=0)

    def send(self, message: bytes):
        self._write.write(message + b'\n')

    def wait(self):
        """Blocks until the parent grants the token (GO)."""
        line = b''
        while not line.endswith(b'\n'):
            chunk = self._read.read(1)
            if not chunk:
                raise SystemExit('the parent closed the token pipe')
            line += chunk
        if line.strip() != GO:
            raise SystemExit(f'unexpected token message {line!r}')

    def hand_over(self, message: bytes = YIELD):
        """Gives the token back (``READY`` the first time, then ``YIELD``) and blocks until it returns."""
        self.send(message)
        self.wait()

    def done(self):
        """Tells the parent this worker is finished (releases the token for good); ignores a closed pipe."""
        try:
            self.send(DONE)
        except OSError:
            pass


class StepRecorder:
    """Training-loop callback ``(step, logs)``: per-iteration wall times and losses, taking turns.

    After step 1 (set-up and tracing) it hands the token over with ``READY``; timing starts when the token
    comes back. Afterwards it hands the token over after the first step that ends ``turn_seconds`` or more
    after its turn began (never after the last step). ``durations_s[i]`` is the wall time of iteration
    ``i + 2`` (data, step and host sync, from the end of the previous callback: waits for the token are
    not included), so the tracing step is never timed and ``len(durations_s) == total_steps - 1``.
    ``rounds[i]`` is the turn (0, 1, ...: the interleaved round) in which iteration ``i + 2`` ran.

    Args:
      turn: a :class:`Turn` (or any object with ``hand_over(message)``).
      turn_seconds: length of a turn, seconds (> 0).
      total_steps: steps of the training run.
      clock: seconds (``time.perf_counter``).
    """

    def __init__(self, turn, turn_seconds: float, total_steps: int, clock: Callable[[], float] = time.perf_counter):
        if not turn_seconds > 0:
            raise ValueError(f'turn_seconds must be > 0; received turn_seconds={turn_seconds!r}')
        self.turn, self.turn_seconds = turn, float(turn_seconds)
        self.total_steps = _check_int('total_steps', total_steps, 1)
        self.clock = clock
        self.durations_s: List[float] = []
        self.rounds: List[int] = []
        self.losses: List[float] = []
        self._start = None
        self._turn_start = None
        self._round = -1

    def __call__(self, step, logs):
        now = self.clock()
        self.losses.append(float(logs['loss']))
        if self._start is not None:
            self.durations_s.append(now - self._start)
            self.rounds.append(self._round)
        if step == 1:
            self.turn.hand_over(READY)
            self._turn_start, self._round = self.clock(), 0
        elif step < self.total_steps and now - self._turn_start >= self.turn_seconds:
            self.turn.hand_over(YIELD)
            self._turn_start, self._round = self.clock(), self._round + 1
        self._start = self.clock()


@dataclasses.dataclass(frozen=True)
class WorkerExit:
    """How a worker of :func:`run_in_turns` ended.

    Attributes:
      returncode: its exit status (negative: killed by that signal).
      peak_mem_mb: its peak resident memory (``ru_maxrss``), MiB.
      turns: how many times it was granted the token.
    """
    returncode: int
    peak_mem_mb: float
    turns: int


class _Worker:
    def __init__(self, process, read_fd, write_fd, log_file):
        self.process, self.read_fd, self.write_fd, self.log_file = process, read_fd, write_fd, log_file
        self.buffer = b''
        self.state = 'setup'  # setup -> waiting <-> running -> done
        self.turns = 0
        self.exit = None

    def messages(self):
        chunk = os.read(self.read_fd, 4096)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b'\n')
        return [line.strip() for line in lines if line.strip()]

    def reap(self):
        if self.exit is None:
            _, status, usage = os.wait4(self.process.pid, 0)
            self.process.returncode = os.waitstatus_to_exitcode(status)
            self.exit = WorkerExit(self.process.returncode, usage.ru_maxrss / KIB_PER_MIB, self.turns)
            os.close(self.read_fd)
            os.close(self.write_fd)
            if self.log_file is not None:
                self.log_file.close()


def _start(command, log_path, cwd, env) -> _Worker:
    log_file = open(log_path, 'w') if log_path is not None else None
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    try:
        process = subprocess.Popen(list(command(to_worker_r, from_worker_w)), cwd=cwd, env=env,
                                   stdout=log_file if log_file else subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                   pass_fds=(to_worker_r, from_worker_w))
    except BaseException:
        for fd in (to_worker_w, from_worker_r):
            os.close(fd)
        if log_file:
            log_file.close()
        raise
    finally:
        os.close(to_worker_r)
        os.close(from_worker_w)
    return _Worker(process, from_worker_r, to_worker_w, log_file)


def run_in_turns(commands: Sequence[Callable[[int, int], Sequence[str]]], timeout_s: float,
                 log_paths: Optional[Sequence[Optional[str]]] = None, cwd=None, env=None) -> List[WorkerExit]:
    """Runs one worker process per command, letting them compute in turns (module docstring).

    Each worker gets two pipe ends and talks through a :class:`Turn` built from them: it sets up, hands the
    token over with ``READY`` and blocks; it computes only while it holds the token and hands it back
    (``YIELD``) after each turn; it ends with ``DONE`` (or by exiting). The parent grants the token when
    no worker holds it and every live worker waits for it, to the one waiting longest.

    Args:
      commands: per worker, ``command(read_fd, write_fd) -> argv``: the worker's command line, told the
        pipe ends it must pass to :class:`Turn` (the ends stay open in the child only).
      timeout_s: the workers still running after this long are killed and ``TimeoutError`` is raised.
      log_paths: per worker, a file for its stdout and stderr (None: discarded).
      cwd, env: of the worker processes (``subprocess.Popen``).

    Returns:
      One :class:`WorkerExit` per command, in order.
    """
    if not commands:
        raise ValueError('commands must hold at least one worker command; received an empty sequence')
    if not timeout_s > 0:
        raise ValueError(f'timeout_s must be > 0; received timeout_s={timeout_s!r}')
    log_paths = list(log_paths) if log_paths is not None else [None] * len(commands)
    if len(log_paths) != len(commands):
        raise ValueError(f'log_paths must have one entry per command ({len(commands)}); received {len(log_paths)}')
    workers: List[_Worker] = []
    queue: List[_Worker] = []
    running: Optional[_Worker] = None
    deadline = time.monotonic() + timeout_s
    try:
        for command, log_path in zip(commands, log_paths):
            workers.append(_start(command, log_path, cwd, env))
        while any(w.state != 'done' for w in workers):
            alive = {w.read_fd: w for w in workers if w.state != 'done'}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f'workers still running after timeout_s={timeout_s} s')
            readable, _, _ = select.select(list(alive), [], [], min(remaining, POLL_S))
            for fd in readable:
                worker = alive[fd]
                messages = worker.messages()
                for message in [DONE] if messages is None else messages:  # EOF: the worker exited
                    if message in (READY, YIELD):
                        worker.state = 'waiting'
                        queue.append(worker)
                    elif message == DONE:
                        worker.state = 'done'
                    if worker is running and worker.state != 'running':
                        running = None
                if worker.state == 'done':
                    worker.reap()
                    if worker in queue:
                        queue.remove(worker)
            if running is None and queue and all(w.state in ('waiting', 'done') for w in workers):
                running = queue.pop(0)
                running.state = 'running'
                running.turns += 1
                os.write(running.write_fd, GO + b'\n')
    finally:
        for worker in workers:
            if worker.exit is None:
                if worker.process.poll() is None:
                    worker.process.kill()
                worker.reap()
    return [worker.exit for worker in workers]


def run_jobs_in_turns(module: str, jobs: Sequence[Mapping], work_dir, timeout_s: float, cwd=None,
                      env=None) -> List[dict]:
    """Runs ``python -m <module> --worker=<job file>`` once per job, in turns (:func:`run_in_turns`).

    The worker's ``main`` hands the job file to :func:`work_in_turns`. In ``work_dir``, job ``tag`` gets
    ``<tag>.job.json`` (the job plus the worker's pipe ends and result path), ``<tag>.log`` (its output)
    and ``<tag>.result.json`` (its result, replaced on every run).

    Args:
      module: the worker's module (run with ``sys.executable -m``).
      jobs: JSON-serialisable dicts, each with a unique file-name-safe ``'tag'``; an optional ``'record'``
        dict starts the worker's result.
      work_dir: a folder for the job, log and result files.
      timeout_s, cwd, env: as :func:`run_in_turns`.

    Returns:
      Per job, the worker's result dict (``{**record, 'ok': False, 'error': ...}`` when it wrote none) with
      ``exit_code`` and ``peak_mem_mb`` (:class:`WorkerExit`) added.
    """
    work_dir = pathlib.Path(work_dir)
    tags = [job.get('tag') for job in jobs]
    if len(set(tags)) != len(tags) or not all(isinstance(t, str) and t and '/' not in t for t in tags):
        raise ValueError(f'jobs must have unique file-name-safe tags; received tags={tags!r}')

    def command(job):
        def argv(read_fd, write_fd):
            path = work_dir / f'{job["tag"]}.job.json'
            path.write_text(json.dumps(dict(job, read_fd=read_fd, write_fd=write_fd,
                                            result_path=str(work_dir / f'{job["tag"]}.result.json'))))
            return [sys.executable, '-m', module, f'--worker={path}']
        return argv

    for tag in tags:
        (work_dir / f'{tag}.result.json').unlink(missing_ok=True)
    exits = run_in_turns([command(job) for job in jobs], timeout_s, [work_dir / f'{tag}.log' for tag in tags],
                         cwd=cwd, env=env)
    results = []
    for job, exit_ in zip(jobs, exits):
        try:
            result = json.loads((work_dir / f'{job["tag"]}.result.json').read_text())
        except (OSError, ValueError):
            result = dict(job.get('record', {}), ok=False, error=f'no result (exit code {exit_.returncode})')
        results.append(dict(result, exit_code=exit_.returncode, peak_mem_mb=exit_.peak_mem_mb))
    return results


def work_in_turns(job_path, measure: Callable[[dict, Turn], Mapping]) -> dict:
    """A worker of :func:`run_jobs_in_turns`: ``measure(job, turn)`` with the job file's job and :class:`Turn`.

    The result, ``{**job['record'], **measure(...), 'ok': True}`` or, if ``measure`` raises,
    ``{**job['record'], 'ok': False, 'error': 'Type: message'}`` (traceback on stderr, i.e. in the log), is
    written to the job's result file; then the worker tells the parent it is done. Returns the result.
    """
    job = json.loads(pathlib.Path(job_path).read_text())
    turn = Turn(job['read_fd'], job['write_fd'])
    result = dict(job.get('record', {}), ok=False)
    try:
        result.update(measure(job, turn))
        result['ok'] = True
    except BaseException as error:  # reported in the result: the parent marks the job failed
        result['error'] = f'{type(error).__name__}: {error}'
        traceback.print_exc()
    finally:
        pathlib.Path(job['result_path']).write_text(json.dumps(result, default=_json_default))
        turn.done()
    return result


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')


# ---------------------------------------------------------------------------------------- step parts
def step_part_functions(forward: Callable[[], object], loss: Callable[[object], object], variables,
                        optimizer, jit_compile: bool = False) -> Dict[str, Callable[[], object]]:
    """The cumulative parts of a training step as ``tf.function``\\ s (names ``STEP_PART_FUNCTIONS``).

    ``forward`` (the model's outputs, summed so they are computed), ``forward_loss``,
    ``forward_loss_gradients`` (returns the gradients too, so they are computed) and ``full_step`` (with
    ``optimizer.apply``: it changes the weights).

    Args:
      forward: zero-argument callable -> the model's outputs (nested tensors) on a fixed batch.
      loss: ``loss(outputs)`` -> float32 scalar.
      variables: the trainable variables.
      optimizer: a built Keras optimizer.
      jit_compile: XLA, as the training step.
    """
    import tensorflow as tf  # (only here and in time_step_parts: the rest of the module needs no TensorFlow)

    @tf.function(jit_compile=jit_compile)
    def forward_only():
        return tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in tf.nest.flatten(forward())])

    @tf.function(jit_compile=jit_compile)
    def forward_loss():
        return loss(forward())

    @tf.function(jit_compile=jit_compile)
    def forward_loss_gradients():
        with tf.GradientTape() as tape:
            value = loss(forward())
        return value, tape.gradient(value, variables)

    @tf.function(jit_compile=jit_compile)
    def full_step():
        with tf.GradientTape() as tape:
            value = loss(forward())
        optimizer.apply(tape.gradient(value, variables), variables)
        return value

    return dict(zip(STEP_PART_FUNCTIONS, (forward_only, forward_loss, forward_loss_gradients, full_step)))


def time_step_parts(functions: Mapping[str, Callable[[], object]], repeats: int,
                    after_repeat: Optional[Callable[[int], None]] = None,
                    clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Minimum seconds of one call of each function over ``repeats`` repeats.

    Each function is called once untimed (warm-up); a function faster than ``STEP_PART_TURN_S`` is then
    called several times per repeat (at most ``STEP_PART_MAX_CALLS``). ``after_repeat(r)``, if given, runs
    after each repeat ``r`` (e.g. to hand the token to another worker between repeats).
    """
    repeats = _check_int('repeats', repeats, 1)

    def timed(function):
        start = clock()
        out = function()
        (out[0] if isinstance(out, tuple) else out).numpy()
        return clock() - start

    import tensorflow as tf
    for function in functions.values():
        tf.nest.map_structure(lambda t: t.numpy(), function())
    calls = {name: int(min(STEP_PART_MAX_CALLS, max(1, STEP_PART_TURN_S / max(timed(f), 1e-9))))
             for name, f in functions.items()}
    times = {name: [] for name in functions}
    for r in range(repeats):
        for name, function in functions.items():
            times[name].extend(timed(function) for _ in range(calls[name]))
        if after_repeat is not None:
            after_repeat(r)
    return {name: float(min(values)) for name, values in times.items()}


def step_parts_ms(seconds: Mapping[str, float]) -> Dict[str, float]:
    """Forward, loss, backward and optimizer ms (differences of :func:`time_step_parts`'s minima) and the full step."""
    missing = [name for name in STEP_PART_FUNCTIONS if name not in seconds]
    if missing:
        raise ValueError(f'seconds must time every one of {STEP_PART_FUNCTIONS}; missing {missing}')
    ms = {name: seconds[name] * MS_PER_S for name in STEP_PART_FUNCTIONS}
    return {'forward_ms': ms['forward'], 'loss_ms': ms['forward_loss'] - ms['forward'],
            'backward_ms': ms['forward_loss_gradients'] - ms['forward_loss'],
            'optimizer_ms': ms['full_step'] - ms['forward_loss_gradients'], 'full_step_ms': ms['full_step']}


def seconds_per_batch(dataset, batches: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per element of iterating ``dataset`` alone: the first element is fetched untimed (it fills
    the prefetch buffers), then ``batches`` elements are timed."""
    batches = _check_int('batches', batches, 1)
    iterator = iter(dataset)
    next(iterator)
    start = clock()
    for _ in range(batches):
        next(iterator)
    return (clock() - start) / batches
