def running_mean(values):
    """The mean of each prefix of values: [v0, (v0+v1)/2, ...]."""
    out, total = [], 0.0
    for i, v in enumerate(values, start=1):
        total += v
        out.append(total / i)
    return out
