"""targets_dir: one YAML file per target, added to the config's targets; its state tells the daemon to reload."""

from __future__ import annotations

from pathlib import Path

from exporter.config import Config, ConfigError, TargetConfig, parse_model

PATTERNS = ("*.yaml", "*.yml")
# What a file's state is made of: a changed, added or removed file changes the directory's state.
FileState = tuple[str, int, int]


def directory_of(config: Config, base: Path) -> Path | None:
    """The targets directory, relative paths taken from the main config file's directory."""
    if config.targets_dir is None:
        return None
    return config.targets_dir if config.targets_dir.is_absolute() else base / config.targets_dir


def target_files(directory: Path) -> list[Path]:
    """The target files, in name order; hidden files (editor and configuration-management temporaries) skipped."""
    found = {path for pattern in PATTERNS for path in directory.glob(pattern) if not path.name.startswith(".")}
    return sorted(found)


def state(config: Config, base: Path) -> tuple[FileState, ...]:
    """(name, mtime, size) of every target file; empty when there is no directory or it cannot be read."""
    directory = directory_of(config, base)
    if directory is None:
        return ()
    states = []
    try:
        for path in target_files(directory):
            info = path.stat()
            states.append((path.name, info.st_mtime_ns, info.st_size))
    except OSError:
        return (("<unreadable>", 0, 0),)
    return tuple(states)


def with_target_files(config: Config, base: Path) -> Config:
    """The config with every file's target appended; ConfigError lists each problem with its file and line."""
    directory = directory_of(config, base)
    assert directory is not None
    if not directory.is_dir():
        raise ConfigError([f"targets_dir: {directory} is not a readable directory"])
    problems: list[str] = []
    targets = list(config.targets)
    origin = {target.name: "targets:" for target in targets}
    for path in target_files(directory):
        try:
            target = parse_model(path.read_text(), str(path), TargetConfig, "a target file must be one target mapping")
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        except OSError as error:
            problems.append(f"{path}: cannot read the file: {error.strerror}")
            continue
        if target.name in origin:
            problems.append(f"{path}: target name {target.name!r} is already used in {origin[target.name]}")
            continue
        origin[target.name] = str(path)
        targets.append(target)
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"targets": targets})
