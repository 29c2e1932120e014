// Starts Swagger UI on /docs (service/docs_ui.py). A file of its own rather than an inline
// script, so that the page's Content-Security-Policy can say script-src 'self'. The document's
// URL comes from the page (data-openapi-url), which knows the app's root path.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    deepLinking: true,
    showExtensions: true,
    // No badge from validator.swagger.io: the page must not reach outside the service.
    validatorUrl: null,
  });
})();
