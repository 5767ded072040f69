"""The two exact routes to one layer's weight Gram between sample blocks I and J (ntk.py picks the cheaper):

    gram route:  sum_{p,q} (delta_ip . delta_jq)(a_ip . a_jq)            never forms a per-sample gradient
    psg route:   <G_i, G_j> with G_i = sum_p delta_ip a_ip^T             per-sample weight gradients, chunked

Shapes: a (n, g, P, in) layer inputs at P positions in g groups; delta (n, g, P, C, out) backprop signals.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 256 * 2**20  # bound on the temporaries of one per-layer Gram step


def pair_gram(vI: torch.Tensor, vJ: torch.Tensor, full: bool) -> torch.Tensor:
    """Gram of per-sample vectors (n, C, F): trace sums over c; full keeps (i c, j c') sample-major."""
    if full:
        return (vI.reshape(-1, vI.shape[-1]) @ vJ.reshape(-1, vJ.shape[-1]).T).double()
    return (vI.reshape(vI.shape[0], -1) @ vJ.reshape(vJ.shape[0], -1).T).double()


def gram_route(aI, dI, aJ, dJ, full: bool) -> torch.Tensor:
    """sum_{p,q} (delta_ip . delta_jq)(a_ip . a_jq): never forms a per-sample weight gradient."""
    nI, g, P, C, dout = dI.shape
    nJ = dJ.shape[0]
    uJ = aJ.transpose(0, 1).reshape(g, nJ * P, -1)  # rows (j, q)
    if full:  # rows (j, q, c): one matmul gives every output pair (c, c')
        eJ = dJ.transpose(0, 1).reshape(g, nJ * P * C, dout)
    else:  # trace: sum_c delta^c . delta^c is one dot product over the (c, out) axis (a view for g = 1)
        eJ = dJ.transpose(0, 1).reshape(g, nJ * P, C * dout)
    per_row = 3 * g * P * nJ * P * (C * C if full else 1) * dI.element_size()
    rows = max(1, CHUNK_BYTES // per_row)
    out = []
    for s in range(0, nI, rows):
        r = min(rows, nI - s)
        uI = aI[s:s + r].transpose(0, 1).reshape(g, r * P, -1)
        M = torch.bmm(uI, uJ.transpose(1, 2))  # (g, rP, nJ P) patch overlaps
        if full:
            eI = dI[s:s + r].transpose(0, 1).reshape(g, r * P * C, dout)
            D = torch.bmm(eI, eJ.transpose(1, 2)).view(g, r, P, C, nJ, P, C)
            k = (D * M.view(g, r, P, 1, nJ, P, 1)).sum((0, 2, 5)).reshape(r * C, nJ * C)  # (i c, j c')
        else:
            eI = dI[s:s + r].transpose(0, 1).reshape(g, r * P, C * dout)
            k = (torch.bmm(eI, eJ.transpose(1, 2)) * M).view(g, r, P, nJ, P).sum((0, 2, 4))
        out.append(k.double())
    return torch.cat(out)


def psg_route(aI, dI, aJ, dJ, full: bool, same: bool) -> torch.Tensor:
    """Per-sample weight gradients G_i = sum_p delta_ip a_ip^T (chunked over output units), and their Gram."""
    nI, g, _, C, dout = dI.shape
    nJ, din = dJ.shape[0], aI.shape[-1]
    per_unit = (nI + nJ) * C * g * din * dI.element_size()
    step = max(1, CHUNK_BYTES // per_unit)
    K = 0
    for o in range(0, dout, step):
        GI = torch.einsum("igpco,igpd->icgod", dI[..., o:o + step], aI).reshape(nI, C, -1)
        GJ = GI if same else torch.einsum("igpco,igpd->icgod", dJ[..., o:o + step], aJ).reshape(nJ, C, -1)
        K = K + pair_gram(GI, GJ, full)
    return K
