def gcd(a, b):
    """Greatest common divisor of two integers by Euclid's algorithm (always non-negative)."""
    a, b = abs(a), abs(b)
    while b:
        a, b = b, a % b
    return a
