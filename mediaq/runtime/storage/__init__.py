"""Storage by URL: where sources are read from and outputs are written to.

* :mod:`~mediaq.runtime.storage.layout`: the output layout (``{root}/{folder}/{image_id}.{ext}``), image ids;
* :mod:`~mediaq.runtime.storage.base`: the :class:`~mediaq.runtime.storage.base.Store` interface every job,
  the janitor's sweep, the display helpers and ``image_frame`` go through;
* :mod:`~mediaq.runtime.storage.local`: a local folder (atomic temp+rename, no escape, ``O_NOFOLLOW``);
* :mod:`~mediaq.runtime.storage.objects`: object stores (``s3://``, ``gs://``, ``az://``, ``memory://``) via obstore;
* :mod:`~mediaq.runtime.storage.urls`: :func:`~mediaq.runtime.storage.urls.open_store` and
  :func:`~mediaq.runtime.storage.urls.open_source`, chosen by URL scheme.
"""
