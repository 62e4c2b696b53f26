"""Rewrite pass for quantized steps: consecutive int8 convs whose intermediate feeds
only the next one become one chain (the intermediate stays uint8 in cache), and a
chain's float input quantization / output dequantization move into the chain, so a
chain quantizes once at its input and dequantizes once at its output."""
from .steps import DequantizeStep, QChainStep, QuantizeStep


def merge_quantized(steps, outputs, notes):
    if not any(isinstance(s, QChainStep) for s in steps):
        return steps
    users = {}
    for s in steps:
        for t in s.reads:
            users.setdefault(t, []).append(s)
    producer = {s.output: s for s in steps}
    gone = set()

    def only_user(t):
        u = users.get(t, [])
        return u[0] if len(u) == 1 and t not in outputs else None

    for s in steps:
        if not isinstance(s, QChainStep) or id(s) in gone:
            continue
        p = producer.get(s.input)
        if (isinstance(p, QuantizeStep) and s.in_q is None and id(p) not in gone
                and only_user(p.output) is s):
            s.input, s.in_q = p.input, (p.scale, p.zp)
            gone.add(id(p))
            users.setdefault(p.input, []).append(s)
            notes.append(f"quantize {p.name} moved into int8 chain {s.name}")
        while s.out_dq is None and not s.qlayers[-1].out_float:
            d = only_user(s.output)
            if isinstance(d, QChainStep) and d.in_q is None and d.input == s.output \
                    and d.qlayers[0].keeps_pixels \
                    and d.qlayers[0].spatial_rank == s.qlayers[-1].spatial_rank:
                s.qlayers.extend(d.qlayers)
                s.output, s.out_dq = d.output, d.out_dq
                producer[s.output] = s
                gone.add(id(d))
                notes.append(f"int8 chain: {d.qlayers[0].name} after "
                             f"{s.qlayers[-len(d.qlayers) - 1].name}")
                continue
            if isinstance(d, DequantizeStep):
                s.output, s.out_dq = d.output, (d.scale, d.zp)
                producer[s.output] = s
                gone.add(id(d))
                notes.append(f"dequantize {d.name} moved into int8 chain {s.name}")
            break
    return [s for s in steps if id(s) not in gone]
