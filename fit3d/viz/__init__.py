"""fit3d.viz"""
