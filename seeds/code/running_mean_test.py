from solution import running_mean

assert running_mean([]) == []
assert running_mean([2, 4, 6]) == [2.0, 3.0, 4.0]
