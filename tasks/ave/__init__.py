"""AVE audio-visual event classification (MA-AVT supplement, Tables 7-9): the official data
reader (``data``, ``audio``), segment accuracy (``metrics``), the LightningModule (``module``)
and MA-AVT / LAVISH / LAVISH* / MBT on a frozen ViT (``models``). docs/ave.md"""
