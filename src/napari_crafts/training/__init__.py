"""Training on your own slides: training pairs (``pairs``), the CRAFTS losses (``losses``) and the loop (``train``).

Qt-free. torch, diffusers and accelerate are imported only inside the functions that train.
"""
