"""Code the tests share: fixtures' data makers, tiny-run flags, the Flower apps in process."""
