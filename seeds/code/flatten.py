def flatten(items):
    """Flatten arbitrarily nested lists into one flat list, keeping the order."""
    out = []
    for item in items:
        if isinstance(item, list):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out
