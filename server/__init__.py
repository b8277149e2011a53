"""The gRPC coordinator (``fedseed coordinator``): run store (SQLite), round logic, servicer, validation.

It holds no model: a closed round is its reply bytes, from which every participant derives
the ledger step (fedseed.rounds). It imports fedseed's core and never the client.
"""
