"""`cit infer` against a PACS: a query finds the studies, their instances are retrieved into a cache
folder under ``--output``, the ordinary run classifies that folder, and each study's DICOM SR is sent
back (``--store-sr``). Over DICOMweb (``dicomweb.py``: QIDO-RS, WADO-RS, STOW-RS) or DIMSE
(``dimse.py``: C-FIND, C-GET, C-STORE); ``common.py``: the query, options and cache; ``run.py``: the run.

The cache is ``<output>/pacs/cache/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``:
every UID is checked (digits and dots, at most 64 characters) before it names anything, and every
path is checked to resolve inside the output. An instance's file gets a modification time derived
from its bytes, so the same instance retrieved again has the same resume key (path, size, time):
a rerun, even after the cache was deleted, does not classify it twice, and a changed instance is
classified again. The cache holds at most ``cache_max_bytes`` (the run stops, naming the limit,
rather than filling the disk) and is deleted once every row is written, unless ``keep_cache``.
``<output>/pacs/.cit-infer.lock`` keeps two runs from filling one cache.

Reports sent: ``<output>/pacs/sr-stored.json`` records, per SR file, the PACS and a digest of what
was stored. A report whose store failed stays in ``sr/`` and is sent again by the next run; one
already stored with the same content is not sent again.

Credentials never come from the command line: ``CIT_PACS_AUTH`` or the file of ``--pacs-auth-file``
holds ``user:password`` (HTTP basic) or ``Bearer <token>``. A URL holding credentials is refused.
TLS certificates are verified (``--pacs-ca-bundle``: a hospital's own CA). DIMSE has neither here.
"""
