"""Time intervals (start, end) in ns: clip to a window, merge, intersect, subtract, measure."""


def clip(op, window):
    return max(op.start, window[0]), min(op.end, window[1])


def union(intervals):
    """Merge (start, end) intervals into a sorted list of disjoint ones."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(interval) for interval in merged]


def intersection(a, b):
    """Intersection of two sorted lists of disjoint intervals."""
    result, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            result.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return result


def total_length(intervals):
    return sum(end - start for start, end in intervals)


def subtract(a, b):
    """The parts of sorted disjoint intervals `a` that no interval of `b` covers."""
    result = []
    for start, end in a:
        for cut_start, cut_end in b:
            if cut_end <= start or cut_start >= end:
                continue
            if cut_start > start:
                result.append((start, cut_start))
            start = max(start, cut_end)
            if start >= end:
                break
        if start < end:
            result.append((start, end))
    return result
