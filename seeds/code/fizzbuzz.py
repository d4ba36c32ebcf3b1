def fizzbuzz(n):
    """Return the FizzBuzz words for 1..n: multiples of 3 -> "Fizz", of 5 -> "Buzz", of both -> "FizzBuzz"."""
    out = []
    for i in range(1, n + 1):
        word = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        out.append(word or str(i))
    return out
