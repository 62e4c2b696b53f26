"""The commands' data: model inputs (random of a given shape, .npy / .npz files, a
folder of them, an .npz split into batches), outputs written as .npz or .npy, and the
progress bar of long runs. numpy loads inside the functions."""
import os
import sys
import time

from ..errors import one_line
from .common import CliError, shape_text


def _known(pairs, names, complaint):
    """{name: value} of (name, value) pairs of --shape or --dim; CliError(complaint(name,
    value)) for a name not in `names`."""
    out = {}
    for name, value in pairs or ():
        if name not in names:
            raise CliError(complaint(name, value))
        out[name] = value
    return out


def input_shapes(session, shape_args, dim_args):
    """({input: concrete shape}, [named or unknown dims that were set to 1]) for random
    inputs: --shape INPUT=... sets a whole input, --dim NAME=N every dim of that name
    (a dim named in an input given by --shape takes its size from there too); any other
    named or unknown dim is 1, and is listed."""
    inputs = session.get_inputs()
    by_name = {a.name: a for a in inputs}
    shapes = _known(shape_args, by_name, lambda name, shape: (
        f"--shape {name}=...: the model has no input {name!r}; its inputs are "
        f"{list(by_name)}"))
    named = []
    for a in inputs:
        for d in a.shape or ():
            if isinstance(d, str) and d not in named:
                named.append(d)
    dims = _known(dim_args, named, lambda name, size: (
        f"--dim {name}={size}: no input has a dim named {name!r}; the named dims are "
        f"{named or 'none (every dim is fixed)'}"))
    for name, shape in shapes.items():
        decl = by_name[name].shape
        if decl is None:
            continue
        if len(decl) != len(shape):
            raise CliError(f"--shape {name}={'x'.join(map(str, shape))}: rank "
                           f"{len(shape)}; input {name!r} is declared with rank "
                           f"{len(decl)} {shape_text(decl)}")
        for axis, (want, got) in enumerate(zip(decl, shape)):
            if isinstance(want, int) and want != got:
                raise CliError(f"--shape {name}={'x'.join(map(str, shape))}: dim {axis} "
                               f"must be {want} (declared {shape_text(decl)})")
            if isinstance(want, str):
                if want in dims and dims[want] != got:
                    raise CliError(f"--shape {name}=... sets {want!r} to {got}, but "
                                   f"it is {dims[want]} elsewhere (--dim or --shape)")
                dims[want] = got
    out, defaulted = {}, []
    for a in inputs:
        if a.name in shapes:
            out[a.name] = shapes[a.name]
            continue
        if a.shape is None:
            raise CliError(f"input {a.name!r} has no declared shape; give one with "
                           f"--shape {a.name}=AxBx... or --input")
        shape = []
        for axis, d in enumerate(a.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            else:
                label = d if isinstance(d, str) else f"{a.name}[{axis}] (unnamed)"
                if label not in defaulted:
                    defaulted.append(label)
                shape.append(1)
        out[a.name] = tuple(shape)
    return out, defaulted


def defaulted_note(defaulted):
    return (f"dims not given, set to 1: {', '.join(defaulted)} (give them with "
            "--dim NAME=N or --shape INPUT=AxBx...)")



def random_feeds(session, seed, shape_args=None, dim_args=None):
    """(feeds, defaulted dims) of seeded random normal inputs: float32, or float16 for
    an input declared tensor(float16) (drawn in float32, then rounded)."""
    import numpy as np
    shapes, defaulted = input_shapes(session, shape_args, dim_args)
    rng = np.random.default_rng(seed)
    types = {a.name: a.type for a in session.get_inputs()}
    return {name: rng.standard_normal(shape, dtype=np.float32).astype(
                np.float16 if types.get(name) == "tensor(float16)" else np.float32)
            for name, shape in shapes.items()}, defaulted


def read_npz(path, what):
    """{key: array} of an .npz file; CliError when it is missing or malformed."""
    import zipfile

    import numpy as np
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise CliError(f"{what} {path!r} is a single .npy array, not an .npz archive")
        with data:
            return {key: data[key] for key in data.files}
    except CliError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CliError(f"cannot read {what} {path!r}: {one_line(exc)}") from None


def file_feeds(session, path):
    import zipfile

    import numpy as np
    names = [arg.name for arg in session.get_inputs()]
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        if len(names) != 1:
            raise CliError(f"a .npy input feeds a single-input model; this model has "
                           f"{len(names)} inputs {names}: give an .npz keyed by input name")
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CliError(f"cannot read input {path!r}: {one_line(exc)}") from None
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise CliError(f"input {path!r} is an .npz archive, not a .npy array")
        return {names[0]: arr}
    if ext == ".npz":
        feeds = read_npz(path, "input")
        missing = [n for n in names if n not in feeds]
        extra = [k for k in feeds if k not in names]
        if missing or extra:
            raise CliError(f"input {path!r} has keys {sorted(feeds)}; the model's inputs "
                           f"are {names}")
        return {n: feeds[n] for n in names}
    raise CliError(f"--input must be a .npy or .npz file, got {path!r}")


def feeds_for(args, session):
    """(feeds, description of where they came from). Prints which dims of random
    inputs were set to 1 for want of --dim / --shape."""
    if getattr(args, "input", None):
        if getattr(args, "shape", None) or getattr(args, "dim", None):
            raise CliError("--shape and --dim set the shapes of random inputs; with "
                           "--input the shapes are the files' own")
        return file_feeds(session, args.input), f"from {args.input}"
    feeds, defaulted = random_feeds(session, args.seed, getattr(args, "shape", None),
                                     getattr(args, "dim", None))
    args.defaulted_dims = defaulted
    return feeds, f"random normal, seed {args.seed}"


def print_defaulted(args):
    defaulted = getattr(args, "defaulted_dims", None)
    if defaulted:
        print(f"note: {defaulted_note(defaulted)}")


def write_npz(path, arrays):
    """Write {name: array} as an .npz at exactly `path` (np.savez would clash with
    output names such as 'file' and append '.npz')."""
    import zipfile

    import numpy as np
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {one_line(exc)}") from None


class Progress:
    """A progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total, label, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.label, self.done = total, label, 0
        self.start = time.perf_counter()
        self.shown = 0.0
        try:
            self.active = self.stream.isatty()
        except (AttributeError, ValueError):
            self.active = False

    def update(self, done=None):
        self.done = self.done + 1 if done is None else done
        if not self.active:
            return
        now = time.perf_counter()
        if now - self.shown < 0.1 and self.done < self.total:
            return
        self.shown = now
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} "
                          f"{rate:.1f}/s ")
        self.stream.flush()

    def close(self):
        if self.active:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


def folder_feeds(session, folder):
    """(label, feeds) for each .npy / .npz file of `folder`, in name order (files are
    read one at a time, as they run), and the count."""
    names = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith((".npy", ".npz"))
                   and os.path.isfile(os.path.join(folder, f)))
    if not names:
        raise CliError(f"input folder {folder!r} holds no .npy or .npz file")
    stems = [os.path.splitext(n)[0] for n in names]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise CliError(f"input folder {folder!r} has both a .npy and a .npz named "
                       f"{twice}; outputs are named after the input file's stem")

    def feeds():
        for name, stem in zip(names, stems):
            yield stem, file_feeds(session, os.path.join(folder, name))
    return f"{len(names)} files of {folder}", len(names), feeds()


def split_feeds(session, path, batch):
    """(label, feeds) for each slice of `batch` samples along the first axis of the
    arrays of an .npz keyed by input name."""
    arrays = file_feeds(session, path)
    sizes = {name: (arr.shape[0] if arr.ndim else None) for name, arr in arrays.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise CliError(f"--batch-size: the arrays of {path!r} must share their first "
                       f"(batch) axis; their sizes are {sizes}")
    total = next(iter(sizes.values()))
    if total == 0:
        raise CliError(f"--batch-size: the arrays of {path!r} hold no sample (first "
                       "axis 0)")
    count = -(-total // batch)

    def feeds():
        for i in range(count):
            yield i, {name: arr[i * batch:(i + 1) * batch] for name, arr in arrays.items()}
    return (f"{total} samples of {path} in {count} batch(es) of up to {batch}", count,
            feeds())


def output_target(path, count_label):
    """'folder' or 'npz' for --output of a run over many inputs."""
    if path is None:
        return None
    if path.lower().endswith(".npz"):
        return "npz"
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"--output {path!r} exists and is not a folder; for {count_label} "
                       "give a folder or an .npz file")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create output folder {path!r}: "
                       f"{exc.strerror or exc}") from None
    return "folder"
