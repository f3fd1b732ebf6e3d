"""tessera.vae"""
