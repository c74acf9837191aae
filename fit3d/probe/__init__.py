"""fit3d.probe"""
