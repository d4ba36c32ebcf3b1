from solution import gcd

assert gcd(12, 18) == 6
assert gcd(7, 0) == 7
assert gcd(-4, 6) == 2
