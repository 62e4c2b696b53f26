"""Run a model once; print each output's shape and statistics and the run time. Over
many inputs (--input FOLDER, or --input X.npz --batch-size N): one run per file or
batch, a progress bar on stderr when it is a terminal, and a summary (count,
throughput)."""
import os
import time

from ..errors import Error, one_line
from .common import (EXIT_OK, CliError, add_command, add_input_args, add_threads_arg,
                     fmt_count, open_session, positive_int, print_header, shape_text)
from .data import (Progress, feeds_for, folder_feeds, output_target, print_defaulted,
                   split_feeds, write_npz)


def add_parser(sub):
    p = add_command(sub, "run", "run a model once, or over many inputs", __doc__)
    add_input_args(p, many=True)
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="run the samples of the --input .npz (its arrays' first axis) N "
                        "at a time")
    p.add_argument("--output", metavar="Y.npz|FOLDER",
                   help="write the outputs to an .npz keyed by output name; over many "
                        "inputs, a folder (one .npy or .npz per input) or an .npz (with "
                        "--batch-size: the batches joined again)")
    add_threads_arg(p)
    return p


def _stats(arr):
    import numpy as np
    if arr.size == 0:
        return "empty"
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    bad = int(a.size - np.count_nonzero(finite))
    if bad:
        a = a[finite]
        if a.size == 0:
            return f"all {bad} values non-finite"
    text = (f"min {a.min():.6g}  max {a.max():.6g}  mean {a.mean():.6g}  "
            f"std {a.std():.6g}")
    if bad:
        text += f"  ({bad} non-finite values left out)"
    return text


def cmd_run(args):
    session = open_session(args.model, args.threads)
    if args.input and os.path.isdir(args.input):
        if args.batch_size is not None:
            raise CliError("--batch-size splits one .npz along its first axis; with an "
                           "input folder every file is one run")
        return _run_many(args, session, folder_feeds(session, args.input))
    if args.batch_size is not None:
        if not args.input or os.path.splitext(args.input)[1].lower() != ".npz":
            raise CliError("--batch-size splits an .npz given with --input along its "
                           "first axis; give --input FILE.npz")
        return _run_many(args, session, split_feeds(session, args.input,
                                                    args.batch_size))
    feeds, origin = feeds_for(args, session)
    clock = time.perf_counter
    start = clock()
    session.run(None, feeds)  # checks the feed, plans its shape, starts the threads
    first = clock() - start
    flops = session.flops({k: v.shape for k, v in feeds.items()})
    start = clock()
    outputs = session.run(None, feeds)
    elapsed = clock() - start
    print_header(args, session)
    for name, arr in feeds.items():
        print(f"input  {name}: {shape_text(arr.shape)} {arr.dtype} ({origin})")
    print_defaulted(args)
    for arg, arr in zip(session.get_outputs(), outputs):
        print(f"output {arg.name}: {shape_text(arr.shape)} {arr.dtype}  {_stats(arr)}")
    rate = f", {flops / elapsed / 1e9:.2f} GF/s" if flops and elapsed > 0 else ""
    print(f"run time: {elapsed * 1e3:.3f} ms ({fmt_count(flops)} FLOPs{rate}; "
          f"first call {first * 1e3:.3f} ms)")
    if args.output:
        write_npz(args.output, {arg.name: arr
                                for arg, arr in zip(session.get_outputs(), outputs)})
        print(f"wrote {args.output}")
    return EXIT_OK


def _run_many(args, session, source):
    """Run every feed of `source` ((description, count, iterator of (label, feeds)));
    outputs to a folder (one file per input) or an .npz; a summary at the end."""
    import numpy as np
    what, count, items = source
    target = output_target(args.output, what)
    split = args.batch_size is not None
    out_names = [o.name for o in session.get_outputs()]
    collected = {name: [] for name in out_names}
    single = len(out_names) == 1
    progress = Progress(count, "run")
    runs = samples = 0
    clock = time.perf_counter
    busy = 0.0
    start = clock()
    try:
        for label, feeds in items:
            t0 = clock()
            try:
                outputs = session.run(None, feeds)
            except Error as exc:
                raise CliError(f"input {label!r}: {one_line(exc)}") from None
            busy += clock() - t0
            runs += 1
            first = next(iter(feeds.values()))
            samples += first.shape[0] if first.ndim else 1
            if target == "folder":
                stem = f"{label:06d}" if split else label
                if single:
                    dest = os.path.join(args.output, f"{stem}.npy")
                    try:
                        np.save(dest, outputs[0], allow_pickle=False)
                    except OSError as exc:
                        raise CliError(f"cannot write {dest!r}: {one_line(exc)}") \
                            from None
                else:
                    write_npz(os.path.join(args.output, f"{stem}.npz"),
                              dict(zip(out_names, outputs)))
            elif target == "npz":
                for name, arr in zip(out_names, outputs):
                    collected[name].append((label, arr))
            progress.update()
    finally:
        progress.close()
    elapsed = clock() - start
    if target == "npz":
        if split:  # one array per output: the batches joined again
            arrays = {name: np.concatenate([a for _, a in parts])
                      for name, parts in collected.items()}
        else:
            arrays = {f"{label}/{name}" if not single else label: arr
                      for name, parts in collected.items() for label, arr in parts}
        write_npz(args.output, arrays)
    print_header(args, session)
    print(f"inputs: {what}")
    rate = runs / elapsed if elapsed > 0 else float("inf")
    srate = samples / elapsed if elapsed > 0 else float("inf")
    print(f"ran {runs} input(s), {samples} sample(s) in {elapsed:.3f} s "
          f"({busy:.3f} s in run()): {rate:.1f} runs/s, {srate:.1f} samples/s")
    if target == "folder":
        print(f"wrote {runs} file(s) to {args.output}"
              + (" (one .npy per input)" if single else " (one .npz per input, keyed by "
                 "output name)"))
    elif target == "npz":
        layout = ("one array per output, batches joined on axis 0" if split else
                  "one array per input file" + ("" if single else ", keyed FILE/OUTPUT"))
        print(f"wrote {args.output} ({layout})")
    return EXIT_OK
