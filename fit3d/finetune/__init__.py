"""fit3d.finetune"""
