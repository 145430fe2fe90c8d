"""Shared plumbing of the experiments: presets, overrides, motion folders and result files.

Only experiments turn flags into constructor arguments (library code reads no flags). Each
experiment defines a frozen dataclass config with presets (``smoke``, ``default``/``quick``,
``paper``); ``--set key=value`` overrides single fields, and unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence, TypeVar

from absl import flags

from posekit.data import mocap

C = TypeVar('C')


def define_common_flags(presets: Sequence[str], default_preset: str, default_out: str):
    """Defines --preset, --out, --mocap-dir, --test-mocap-dir, --seed, --set in absl.flags."""
    flags.DEFINE_enum('preset', default_preset, list(presets), 'Configuration preset.')
    flags.DEFINE_string('out', default_out, 'Output directory for results, checkpoints, plots.')
    flags.DEFINE_string(
        'mocap-dir', 'auto',
        "Folder of BVH training motion. 'auto': ../shared/data/cmu_mocap if present, else the "
        "embedded procedural motion; 'procedural' forces the embedded motion.")
    flags.DEFINE_string(
        'test-mocap-dir', None,
        'Folder of BVH files held out as the external test set (all of it is used for testing).')
    flags.DEFINE_integer('seed', 0, 'Random seed (data order, augmentation, initialisation).')
    flags.DEFINE_multi_string('set', [], 'Override a config field: --set key=value (repeatable).')


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
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
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
            if isinstance(v, float):
                cells.append(format(v, floatfmt))
            else:
                cells.append(str(v))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
