def word_count(text):
    """Count how often each lower-cased word occurs in text; returns a dict word -> count."""
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,;:!?\"'()")
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts
