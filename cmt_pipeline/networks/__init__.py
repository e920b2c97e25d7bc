"""Published network architectures, written here (never imported from the reference code): each file one family,
each class built from exactly the constructor arguments of its reference class and holding parameters under the
same names, so a published snapshot's recorded arguments and weights load into it unchanged.

    layers.py     EDM's building blocks (Linear, Conv2d with resampling, GroupNorm, UNetBlock, embeddings)
    songunet.py   SongUNet (DDPM++ / NCSN++ settings), NVlabs/edm training/networks.py
    adm.py        DhariwalUNet (ADM), NVlabs/edm training/networks.py
    edm2.py       the magnitude-preserving UNet, NVlabs/edm2 training/networks_edm2.py

The preconditionings that turn these backbones into denoisers D(x, sigma, labels) live in teachers/ (native.py).
"""
