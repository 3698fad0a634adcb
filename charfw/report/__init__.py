"""The character report: what a person wants to look at, as static HTML under build/report/.

    grid.py     which image stands in each view-code cell (pure)
    numbers.py  per target: images x repeats, batches, epochs, batch per size class (pure)
    sheets.py   contact sheets (PNG) from the grid
    charts.py   loss / learning-rate curves from a run's TensorBoard log (PNG)
    pages.py    the HTML pages
No torch is imported: the pages before training build from images and manifests alone.
"""
