"""napari plugin (npe2 manifest ``napari.yaml``): readers of localization tables and Picasso
movies, a writer of Points layers, and the Localize, Simulate and Calibrate dock widgets.

Install with ``pip install 'stormfold[napari]'``. Nothing here is imported by the rest of
stormfold; napari imports these modules when it needs them.
"""
