"""Packed weights: a layer's [cout, k] weight as blocks of at most `mr` output rows,
each stored [k][rows] so a kernel streams one block's rows per reduction step. The
block table is what the kernels trust (a plan file's is checked against it)."""
import numpy as np


def split_rows(count, mr):
    """Balanced blocks of at most mr rows: 16 -> 6, 5, 5 (not 6, 6, 4)."""
    if count <= 0:
        return []
    nb = -(-count // mr)
    base, extra = divmod(count, nb)
    return [base + 1] * extra + [base] * (nb - extra)


def block_table(cout, k, group, mr):
    """The packed-block table of a [cout, k] weight in `group` groups: rows of (rows,
    first output channel, first input channel, offset into the packed weights)."""
    blocks, offset, cout_g = [], 0, cout // group
    for g in range(group):
        row = g * cout_g
        for rows in split_rows(cout_g, mr):
            blocks.append((rows, row, g * k, offset))
            offset += rows * k
            row += rows
    return np.array(blocks, dtype=np.intp).reshape(-1, 4)


def pack_layer(layer, mr):
    """Pack a layer's weight [cout, k] as blocks [k][rows <= mr] per group; returns
    (packed float32, blocks intp [nblocks, 4] = rows, cout0, cin0, offset). A layer
    loaded from a plan file already packed for this mr is used as it is."""
    if layer.packed is not None and layer.packed[0] == mr:
        return layer.packed[1], layer.packed[2]
    weight = layer.weight if layer.weight is not None else unpack_layer(layer)
    cout, k = weight.shape
    blocks = block_table(cout, k, layer.group, mr)
    # split_rows makes (per group) `extra` blocks of base + 1 rows, then blocks of base
    # rows: each run of equal blocks is one reshape + transpose, not one slice per block
    group = layer.group
    cout_g = cout // group
    sizes = split_rows(cout_g, mr)
    if not sizes:
        return np.zeros(0, np.float32), blocks
    w = np.asarray(weight, np.float32).reshape(group, cout_g, k)
    # written in place into one buffer: peak memory is the weight plus its packed copy
    packed = np.empty((group, cout_g * k), np.float32)
    row = 0
    for rows in dict.fromkeys(sizes):
        count = sizes.count(rows)
        part = w[:, row:row + count * rows].reshape(group, count, rows, k)
        dest = packed[:, row * k:(row + count * rows) * k].reshape(group, count, k, rows)
        np.copyto(dest, part.transpose(0, 1, 3, 2))
        row += count * rows
    return packed.reshape(-1), blocks


def unpack_layer(layer):
    """The [cout, k] weight back from a packed layer."""
    _, packed, blocks = layer.packed
    cout, k = layer.wshape
    weight = np.zeros((cout, k), np.float32)
    for rows, cout0, _, offset in blocks.tolist():
        weight[cout0:cout0 + rows] = packed[offset:offset + rows * k].reshape(k, rows).T
    return weight


