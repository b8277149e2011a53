"""Edge clients: the gRPC client (``fedseed client``) hosting a Flower ``ClientApp``, and the
Flower ``ServerApp`` behind ``fedseed simulate --engine flower``. It imports fedseed's core and
never the server.
"""
