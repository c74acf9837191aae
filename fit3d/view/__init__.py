"""fit3d.view: look at lifted scenes. ``fit3d view`` (a viser server: splats coloured by RGB / feature PCA /
similarity to a clicked point, training cameras, original-vs-fine-tuned patch similarity) and
``fit3d export`` (a standard 3DGS PLY coloured by the feature PCA). The scene-building code
(:mod:`~fit3d.view.splats`, :mod:`~fit3d.view.cameras`, :mod:`~fit3d.view.patches`) is plain array code;
only :mod:`~fit3d.view.server` imports viser (the optional extra ``fit3d[view]``)."""
