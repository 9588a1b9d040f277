"""One module per fuzz target; each defines ``test_one_input(data: bytes) -> None``, which
raises (an AssertionError, or whatever escaped the code under test) on a finding."""
