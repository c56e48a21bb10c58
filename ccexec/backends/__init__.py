"""How a supervisor is started and reached: on this host, in a container, or one docker exec a block."""
