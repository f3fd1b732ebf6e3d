"""tessera.nn"""
