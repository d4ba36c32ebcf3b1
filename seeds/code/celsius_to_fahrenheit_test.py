from solution import celsius_to_fahrenheit

assert celsius_to_fahrenheit(0) == 32
assert celsius_to_fahrenheit(100) == 212
assert abs(celsius_to_fahrenheit(-40) + 40) < 1e-9
